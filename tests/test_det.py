"""Task det (effdet): box conventions, exact flip de-augmentation, the dataset's boxes under augmentation, empty
images, the loss, predictions scaled back to original pixels, weights loading, and a tiny training via the CLI."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from kcomp.artifacts import read_index
from kcomp.artifacts.index import write_index
from kcomp.infer.box_tta import flip_boxes, unflip_boxes, xyxy_to_yxyx, yxyx_to_xyxy
from kcomp.infer.tta import flips
from kcomp.runs import config
from kcomp.tasks import get_task
from tests.conftest import run_cli

SIZE = 128
SHAPES = ((300, 240), (256, 320), (288, 288))  # (height, width): boxes must be rescaled per axis


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """One intra-op thread here and in CLI subprocesses: on a shared 2-core machine, two OpenMP threads that
    spin-wait for each other run effdet 10-50x slower than one."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_det_index(root: Path, *, n_train: int = 12, n_test: int = 3, size: int = SIZE, seed: int = 0,
                   empty_every: int = 4) -> Path:
    """PNG cache of `size` px (grey, dark field) with one bright rectangle per box; index boxes in ORIGINAL pixels
    of varied (height, width). Every `empty_every`-th train image has no box."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for k in range(n_train + n_test):
        h, w = SHAPES[k % len(SHAPES)]
        split = "train" if k < n_train else "test"
        n = 0 if (split == "train" and empty_every and k % empty_every == 0) else 1
        img = rng.normal(40, 6, (size, size)).clip(0, 255).astype(np.uint8)
        boxes = []
        for _ in range(n):
            bw, bh = rng.uniform(0.2, 0.35) * w, rng.uniform(0.2, 0.35) * h
            x1, y1 = rng.uniform(0.05, 0.9 - bw / w) * w, rng.uniform(0.05, 0.9 - bh / h) * h
            box = {"x1": float(x1), "y1": float(y1), "x2": float(x1 + bw), "y2": float(y1 + bh), "label": "opacity"}
            sx, sy = size / w, size / h
            img[int(round(box["y1"] * sy)):int(round(box["y2"] * sy)),
                int(round(box["x1"] * sx)):int(round(box["x2"] * sx))] = 220
            boxes.append(box)
        cv2.imwrite(str(root / "images" / f"im{k}.png"), img)
        rows.append({"id": f"im{k}", "path": f"images/im{k}.png", "split": split, "height": h, "width": w,
                     "boxes": boxes if split == "train" else [], "group": f"g{k}"})
    df = pd.DataFrame(rows)
    return Path(write_index(df, root / "index.parquet", root=root, competition="", task="det", classes=["opacity"]))


def _cfg(**kw):
    return config.resolve(task="det", model="tf_efficientdet_d0", img_size=SIZE, batch_size=4, **kw)


# ------------------------------------------------------------------------------------------------ box conventions


def test_yxyx_round_trip_and_order():
    b = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    assert xyxy_to_yxyx(b).tolist() == [[2.0, 1.0, 4.0, 3.0]]
    torch.testing.assert_close(yxyx_to_xyxy(xyxy_to_yxyx(b)), b)


@pytest.mark.parametrize("size,views", [((64, 64), 8), ((40, 70), 4)])
def test_unflip_is_the_exact_inverse_of_flip(size, views):
    g = torch.Generator().manual_seed(0)
    h, w = size
    xy = torch.rand(20, 2, generator=g) * torch.tensor([w / 2, h / 2])
    boxes = torch.cat([xy, xy + torch.rand(20, 2, generator=g) * torch.tensor([w / 2, h / 2])], 1)
    for v in range(views):
        there = flip_boxes(boxes, v, size)
        assert (there[:, 2] >= there[:, 0]).all() and (there[:, 3] >= there[:, 1]).all()
        torch.testing.assert_close(unflip_boxes(there, v, size), boxes, rtol=0, atol=1e-5)


def _blob_box(img: torch.Tensor) -> list[float]:
    ys, xs = torch.nonzero(img > 0, as_tuple=True)
    return [xs.min().item(), ys.min().item(), xs.max().item() + 1.0, ys.max().item() + 1.0]


def test_flip_boxes_follow_the_flipped_pixels():
    """Model-free: a blob on the left is on the right of the W-flipped view, and so on for all 8 views."""
    h = w = 32
    img = torch.zeros(1, 1, h, w)
    img[..., 5:12, 2:9] = 1  # rows 5..11, columns 2..8: box [2, 5, 9, 12]
    box = torch.tensor([[2.0, 5.0, 9.0, 12.0]])
    views = flips(img, 8)
    assert _blob_box(views[1][0, 0]) == [23.0, 5.0, 30.0, 12.0]  # now on the right
    for v, view in enumerate(views):
        assert _blob_box(view[0, 0]) == flip_boxes(box, v, (h, w))[0].tolist(), v
        found = torch.tensor([_blob_box(view[0, 0])])
        assert unflip_boxes(found, v, (h, w)).tolist() == box.tolist(), v


# ------------------------------------------------------------------------------------------------------ dataset


def test_dataset_boxes_stay_on_the_blob_under_augmentation(tmp_path):
    table = read_index(make_det_index(tmp_path, n_train=6, n_test=0))
    task = get_task("det")
    cfg = _cfg(aug="medium")
    setup = task.setup(table, cfg)
    rows = table.rows("train")
    ds = task.dataset(table, rows, cfg, setup, train=True)
    checked = 0
    for i in range(len(ds)):
        for seed in range(6):
            x, y = ds[(i, seed)]
            assert x.dtype == torch.uint8 and x.shape == (1, SIZE, SIZE)
            x2, y2 = ds[(i, seed)]
            assert torch.equal(x, x2) and torch.equal(y, y2)  # same seed, same sample (resume contract)
            for y1, x1, yb, xb, cls in y.tolist():  # yxyx, classes from 1
                if cls < 0:
                    continue
                assert cls == 1 and 0 <= x1 < xb <= SIZE and 0 <= y1 < yb <= SIZE
                inside = x[0, int(y1) + 2:int(yb) - 2, int(x1) + 2:int(xb) - 2].float().mean()
                assert inside > 150, (i, seed, inside)  # the bright blob is where the box says
                checked += 1
    assert checked > 20
    # validation targets: normalised xyxy + 0-based label, matching the index's original-pixel boxes
    val = task.dataset(table, rows, cfg, setup, train=False)
    t = val.targets_array()
    r = rows.iloc[1]
    b = r["boxes"][0]
    expect = [b["x1"] / r["width"], b["y1"] / r["height"], b["x2"] / r["width"], b["y2"] / r["height"], 0]
    np.testing.assert_allclose(t[1][0], expect, rtol=1e-5)


def test_empty_images_are_all_padding_and_the_loss_stays_finite(tmp_path):
    table = read_index(make_det_index(tmp_path, n_train=4, n_test=0))
    task = get_task("det")
    cfg = _cfg()
    setup = task.setup(table, cfg)
    ds = task.dataset(table, table.rows("train"), cfg, setup, train=True)
    x0, y0 = ds[(0, 1)]  # image 0 has no box
    assert (y0 == -1).all()
    model = task.build_model(cfg, setup)
    loss_fn = task.loss(cfg, setup)
    collate = task.train_collate(cfg, setup)  # anchors labelled in the loader, as training does
    items = [ds[(i, 1)] for i in range(4)]
    x, y = collate(items)
    _, empty = collate([(xi, torch.full_like(yi, -1.0)) for xi, yi in items])
    for target in (empty, y):  # a batch with no box at all, then a mixed one
        model.zero_grad()
        loss = loss_fn(model(x), target)
        assert torch.isfinite(loss) and loss > 0
        loss.backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)


# ------------------------------------------------------------------------------------------ predict and frames


class _BlobDetector(torch.nn.Module):
    """A stand-in detector: 'detects' the bright region of each image exactly, so predict's TTA bookkeeping can be
    checked without training. `decode` returns the DetNet layout: (B, K, 6) input pixels, padding score 0."""

    def forward(self, x):
        return x, None

    def decode(self, x, _):
        out = torch.zeros(x.shape[0], 5, 6)
        for i, img in enumerate(x[:, 0]):
            out[i, 0, :4] = torch.tensor(_blob_box((img > 128).float()))
            out[i, 0, 4:] = torch.tensor([0.9, 0.0])
            out[i, 1:, 5] = -1
        return out


@pytest.mark.parametrize("tta", [1, 2, 4, 8])
def test_predict_maps_every_view_back(tmp_path, tta):
    table = read_index(make_det_index(tmp_path, n_train=4, n_test=0, empty_every=0))
    task = get_task("det")
    cfg = _cfg()
    setup = task.setup(table, cfg)
    rows = table.rows("train")
    ds = task.dataset(table, rows, cfg, setup, train=False)
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    raw = task.predict(_BlobDetector(), x, tta)
    assert raw.shape == (len(ds), tta * 5, 7)
    fused = task.fuse_views(raw.numpy())
    truth = ds.targets_array()
    for f, t in zip(fused.rows(), truth, strict=True):
        assert len(f) == 1
        np.testing.assert_allclose(f[0, :4], t[0, :4], atol=1.5 / SIZE)  # the painted box, +-1 px of rounding
        assert f[0, 4] == pytest.approx(0.9) and f[0, 5] == 0
    frame = task.frame(rows, fused, setup, with_targets=False)
    for (_, r), boxes in zip(rows.iterrows(), frame["boxes"], strict=True):
        b, t = boxes[0], r["boxes"][0]  # (k, 6) rows x1 y1 x2 y2 score label
        for q, (k, scale) in enumerate((("x1", r["width"]), ("y1", r["height"]), ("x2", r["width"]),
                                        ("y2", r["height"]))):
            assert b[q] == pytest.approx(t[k], abs=1.5 * scale / SIZE), k  # ORIGINAL pixels
    assert list(frame.columns) == ["id", "boxes", "height", "width"]


def test_average_fuses_models_and_keeps_single_models_as_they_are():
    from kcomp.artifacts.boxes import Boxes

    task = get_task("det")
    a = Boxes.from_rows([np.array([[0.1, 0.1, 0.3, 0.3, 0.8, 0]], np.float32), np.zeros((0, 6), np.float32)])
    b = Boxes.from_rows([np.array([[0.12, 0.1, 0.32, 0.3, 0.6, 0]], np.float32), np.zeros((0, 6), np.float32)])
    assert task.average([a]) is a
    fused = task.average([a, b]).rows()
    assert fused[0].shape == (1, 6) and fused[0][0, 4] == pytest.approx(0.7) and len(fused[1]) == 0
    np.testing.assert_allclose(fused[0][0, 0], (0.1 * 0.8 + 0.12 * 0.6) / 1.4, rtol=1e-5)


# --------------------------------------------------------------------------------------------- model and weights


def test_img_size_not_a_multiple_of_128_is_a_usage_error(tmp_path):
    idx = make_det_index(tmp_path / "d", n_train=4, n_test=0)
    r = run_cli("split", idx, "-o", tmp_path / "folds.parquet", "--folds", "2")
    assert r.code == 0, r.stderr
    r = run_cli("train", "det", "--folds", tmp_path / "folds.parquet", "--model", "tf_efficientdet_d0",
                "--img-size", "200", "-o", tmp_path / "run")
    assert r.code == 2 and "--img-size 200" in r.last_error_line and "128" in r.last_error_line
    assert not (tmp_path / "run").exists()
    r = run_cli("train", "det", "--folds", tmp_path / "folds.parquet", "--model", "resnet18", "--img-size", "128",
                "-o", tmp_path / "run")
    assert r.code == 2 and "not an effdet config" in r.last_error_line


def test_weights_load_from_a_bench_checkpoint_and_from_a_timm_backbone(tmp_path):
    import timm
    from effdet import DetBenchTrain, create_model

    from kcomp.models.det import create_det_model

    coco = create_model("tf_efficientdet_d0", num_classes=90, pretrained_backbone=False, image_size=(SIZE, SIZE))
    torch.save(DetBenchTrain(coco).state_dict(), tmp_path / "bench.pth")  # keys "model.backbone...", 90 classes
    net = create_det_model("tf_efficientdet_d0", 1, SIZE, weights=str(tmp_path / "bench.pth"))
    torch.testing.assert_close(net.model.backbone.conv_stem.weight, coco.backbone.conv_stem.weight)
    torch.testing.assert_close(net.model.box_net.predict.conv_pw.weight, coco.box_net.predict.conv_pw.weight)
    assert net.model.class_net.predict.conv_pw.weight.shape[0] == 9  # 9 anchors x 1 class, COCO's head skipped

    backbone = timm.create_model("tf_efficientnet_b0", num_classes=10)
    torch.save(backbone.state_dict(), tmp_path / "b0.pth")
    net = create_det_model("tf_efficientdet_d0", 1, SIZE, weights=str(tmp_path / "b0.pth"))
    torch.testing.assert_close(net.model.backbone.conv_stem.weight, backbone.conv_stem.weight)
    torch.testing.assert_close(net.model.backbone.blocks[1][0].conv_pw.weight, backbone.blocks[1][0].conv_pw.weight)


# ------------------------------------------------------------------------------------------------- via the CLI


def test_tiny_training_oof_tta_and_tune_threshold_via_the_cli(tmp_path):
    import json

    from kcomp.artifacts.predictions import read_predictions

    idx = make_det_index(tmp_path / "d", n_train=8, n_test=2)
    folds, run = tmp_path / "folds.parquet", tmp_path / "run"
    assert run_cli("split", idx, "-o", folds, "--folds", "2").code == 0
    r = run_cli("train", "det", "--folds", folds, "--model", "tf_efficientdet_d0", "--img-size", str(SIZE),
                "--epochs", "1", "--batch-size", "4", "--workers", "0", "--fold", "0", "--no-pretrained", "-o", run)
    assert r.code == 0, r.stderr
    metrics = pd.read_parquet(run / "fold0" / "metrics.parquet")
    assert "val_map50" in metrics.columns and len(metrics) == 1
    r = run_cli("oof", run, "-o", tmp_path / "oof.parquet", "--workers", "0", "--tta", "2", "--json")
    assert r.code == 0, r.stderr
    assert 0 <= json.loads(r.stdout)["score"] <= 1
    r = run_cli("tta", run, "-o", tmp_path / "test.parquet", "--workers", "0", "--tta", "4")
    assert r.code == 0, r.stderr
    pred = read_predictions(tmp_path / "test.parquet")
    index = read_index(idx).df.set_index("id")
    assert pred.task == "det" and list(pred.df["id"]) == ["im8", "im9"]
    for i, h, w, boxes in zip(pred.df["id"], pred.df["height"], pred.df["width"], pred.boxes.rows(), strict=True):
        assert (h, w) == tuple(index.loc[i, ["height", "width"]])  # the original size, not the 128 px input
        assert len(boxes) > 0
        for x1, y1, x2, y2, score, label in boxes:
            assert 0 <= x1 < x2 <= w + 1e-3 and 0 <= y1 < y2 <= h + 1e-3
            assert 0 < score <= 1 and label == 0
    r = run_cli("tune-threshold", tmp_path / "oof.parquet", "-o", tmp_path / "thr.json")
    assert r.code == 0, r.stderr
    thr = json.loads((tmp_path / "thr.json").read_text())
    assert thr["method"] == "none" and thr["metric"] == "map50"


def _iou(a: dict, b: dict) -> float:
    ix = max(0.0, min(a["x2"], b["x2"]) - max(a["x1"], b["x1"]))
    iy = max(0.0, min(a["y2"], b["y2"]) - max(a["y1"], b["y1"]))
    inter = ix * iy
    return inter / ((a["x2"] - a["x1"]) * (a["y2"] - a["y1"]) + (b["x2"] - b["x1"]) * (b["y2"] - b["y1"]) - inter)


@pytest.mark.slow
def test_detector_learns_the_boxes(tmp_path):
    """After a short CPU training from scratch, each held-out image's best-scoring box lands on its painted
    rectangle (in ORIGINAL pixels): the yxyx targets, 1-based classes, TTA inverses and the scaling back all line up;
    any of them wrong and the boxes miss. (Per image, not mAP across folds: two undertrained models' scores are not
    comparable with each other, which makes the pooled OOF mAP of such a short run noisy.)"""
    import json

    from kcomp.artifacts.predictions import read_predictions

    idx = make_det_index(tmp_path / "d", n_train=24, n_test=0, empty_every=6)
    folds, run = tmp_path / "folds.parquet", tmp_path / "run"
    assert run_cli("split", idx, "-o", folds, "--folds", "2").code == 0
    r = run_cli("train", "det", "--folds", folds, "--model", "tf_efficientdet_d0", "--img-size", str(SIZE),
                "--epochs", "15", "--batch-size", "4", "--lr", "2e-3", "--workers", "0", "--fold", "all",
                "--no-pretrained", "-o", run)
    assert r.code == 0, r.stderr
    r = run_cli("oof", run, "-o", tmp_path / "oof.parquet", "--workers", "0", "--tta", "2", "--json")
    assert r.code == 0, r.stderr
    assert 0 < json.loads(r.stdout)["score"] <= 1
    oof = read_predictions(tmp_path / "oof.parquet")
    truth = read_index(idx).df.set_index("id")["boxes"]
    best = [dict(zip(("x1", "y1", "x2", "y2"), b[np.argmax(b[:, 4]), :4])) if len(b) else None
            for b in oof.boxes.rows()]
    ious = [max(_iou(b, t) for t in truth[i]) for i, b in zip(oof.df["id"], best, strict=True) if len(truth[i])]
    assert len(ious) == 20
    assert np.median(ious) > 0.3 and np.mean(np.array(ious) > 0.5) >= 0.3, np.round(ious, 2)

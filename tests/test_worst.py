"""Previews that show where a model is wrong: seg/ink overlays at a thresholds file's settings with the truth beside
the prediction, and the gallery of the OOF rows with the lowest own score (checked against a direct computation)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kcomp.artifacts.index import read_index
from kcomp.artifacts.predictions import read_predictions, write_predictions
from tests.conftest import run_cli

SIZE, MAP = (140, 210), (70, 105)


def _png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _boundary(mask: np.ndarray) -> np.ndarray:
    """Pixels of `mask` with a 4-neighbour outside it (the image edge counts as outside): where an outline goes."""
    m = np.pad(mask.astype(bool), 1)
    inner = m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
    return mask.astype(bool) & ~inner


def _share(panel: np.ndarray, where: np.ndarray, rgb: tuple[int, int, int]) -> float:
    """The share of the pixels `where` that have exactly colour `rgb` (an outline's, not a translucent fill's)."""
    return float((panel[where] == np.array(rgb, np.uint8)).all(axis=1).mean()) if where.any() else 1.0


def _shift(mask: np.ndarray, dx: int) -> np.ndarray:
    out = np.zeros_like(mask)
    out[:, dx:] = mask[:, : mask.shape[1] - dx]
    return out


@pytest.fixture(scope="module")
def clouds_oof(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Clouds OOF maps whose masks sit a few pixels right of the truth at probability 0.41: at 0.5 nothing shows;
    `kcomp tune-threshold` finds a threshold that draws them."""
    from kcomp.competitions import get_competition
    from kcomp.tasks import get_task
    from kcomp.tasks.seg import truth_masks
    from tests.clouds_fixture import CLASSES, make_clouds_layout

    tmp = tmp_path_factory.mktemp("clouds_worst")
    layout = make_clouds_layout(tmp / "raw", n_train=6, n_test=1, size=SIZE, seed=11, p_present=0.7)
    get_competition("clouds").prep(layout.raw, tmp / "data")
    index = read_index(tmp / "data" / "index.parquet")
    train = index.rows("train")
    setup = get_task("seg").setup(index)
    rng = np.random.default_rng(0)
    maps, truths = [], []
    for k in range(len(train)):
        truth = truth_masks(train.iloc[k], setup, MAP).astype(bool)
        shifted = np.stack([_shift(t, int(rng.integers(3, 12))) for t in truth])
        maps.append(np.where(shifted, 105, 20).astype(np.uint8))
        truths.append(truth)
    df = pd.DataFrame({"id": list(train["id"]), "fold": [k % 2 for k in range(len(train))],
                       "map_key": list(train["id"]), "height": SIZE[0], "width": SIZE[1], "map": maps})
    oof = tmp / "oof.parquet"
    write_predictions(df, oof, task="seg", kind="oof", classes=list(CLASSES), index=str(tmp / "data" / "index.parquet"),
                      metric="dice", score=0.0)
    r = run_cli("tune-threshold", oof, "-o", tmp / "thr.json", "--min-sizes", "0")
    assert r.code == 0, r.stderr
    thr = json.loads((tmp / "thr.json").read_text())
    return {"tmp": tmp, "oof": oof, "thr": tmp / "thr.json", "body": thr, "maps": maps, "truths": truths,
            "ids": list(train["id"]), "classes": list(CLASSES)}


def test_clouds_oof_overlays_draw_truth_and_prediction_at_the_tuned_settings(clouds_oof: dict) -> None:
    from kcomp.report.preview import _colour
    from kcomp.post.seg_threshold import postprocess

    out = clouds_oof["tmp"] / "report"
    r = run_cli("report", clouds_oof["oof"], clouds_oof["thr"], "-o", out, "--previews", "6", "--worst", "3",
                "--json")
    assert r.code == 0, r.stderr
    sections = json.loads(r.stdout)["sections"]
    assert [s["kind"] for s in sections] == ["predictions", "worst", "thresholds"]
    assert any(str(clouds_oof["thr"]) in n for n in sections[0]["notes"])
    settings = {c: clouds_oof["body"]["classes"][c] for c in clouds_oof["classes"]}
    assert all(s["threshold"] < 105 / 255 for s in settings.values())  # tuned below the maps' 0.41
    drawn = 0
    for k, rid in enumerate(clouds_oof["ids"]):
        img = _png(out / "oof_previews" / f"{Path(rid).stem}.png")
        h, w = MAP
        left, right = img[:h, :w], img[:h, w + 4: 2 * w + 4]  # prediction | 4 px gap | truth
        for c, name in enumerate(clouds_oof["classes"]):
            s = settings[name]
            pred = postprocess(clouds_oof["maps"][k][c], s["threshold"], s["min_size"], s["top"])
            truth = clouds_oof["truths"][k][c]
            assert not (clouds_oof["maps"][k][c] >= 128).any()  # at the old fixed 0.5 there is nothing to draw
            colour = _colour(c)
            if pred.any():
                drawn += 1
                assert _share(left, _boundary(pred), colour) > 0.75, (rid, name)
                assert _share(left, _boundary(truth) & ~pred & ~_boundary(pred), colour) < 0.25
            assert _share(right, _boundary(truth), colour) > 0.75, (rid, name)
    assert drawn >= 6


def test_worst_rows_are_the_lowest_per_row_dice(clouds_oof: dict) -> None:
    from kcomp.metrics._segmentation import dice_empty_one
    from kcomp.post.seg_threshold import postprocess
    from kcomp.report.build import build_report

    sections, _ = build_report([str(clouds_oof["oof"]), str(clouds_oof["thr"])],
                                     clouds_oof["tmp"] / "rep2", previews=0, worst=3)
    worst = sections[1]
    direct = []
    for m, truth in zip(clouds_oof["maps"], clouds_oof["truths"], strict=True):
        per = [dice_empty_one(postprocess(m[c], **{k: clouds_oof["body"]["classes"][name][k]
                                                     for k in ("threshold", "min_size", "top")}), truth[c])
               for c, name in enumerate(clouds_oof["classes"])]
        direct.append(float(np.mean(per)))
    order = np.argsort(direct, kind="stable")[:3]
    assert [r["id"] for r in worst.rows] == [clouds_oof["ids"][i] for i in order]
    assert [r["score"] for r in worst.rows] == pytest.approx([direct[i] for i in order], abs=1e-6)
    assert [r["rank"] for r in worst.rows] == [1, 2, 3] and len(worst.images) == 3
    assert all((clouds_oof["tmp"] / "rep2" / im.path).is_file() for im in worst.images)


def test_cls_worst_rows_are_the_most_confident_mistakes(demo_run: dict[str, Path], tmp_path: Path) -> None:
    from kcomp.report.build import build_report

    sections, _ = build_report([str(demo_run["oof"])], tmp_path / "r", worst=5)
    worst = sections[1]
    preds = read_predictions(demo_run["oof"])
    probs, target = preds.probs(), preds.df["target"].to_numpy()
    p_true = probs[np.arange(len(target)), target]
    order = np.argsort(p_true, kind="stable")[:5]
    assert [r["id"] for r in worst.rows] == list(preds.df["id"].to_numpy()[order])
    assert [r["score"] for r in worst.rows] == pytest.approx(p_true[order].tolist(), abs=1e-6)
    assert [r["true"] for r in worst.rows] == [preds.classes[t] for t in target[order]]
    assert [r["predicted"] for r in worst.rows] == [preds.classes[t] for t in probs[order].argmax(1)]
    assert all(r["true"] in im.caption and r["predicted"] in im.caption for r, im in zip(worst.rows, worst.images,
                                                                                     strict=True))
    assert all((tmp_path / "r" / im.path).is_file() for im in worst.images)


def test_det_worst_rows_miss_the_most_boxes(tmp_path: Path) -> None:
    import cv2

    from kcomp.artifacts import write_index
    from kcomp.report.build import build_report

    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    for name in "abc":
        cv2.imwrite(str(root / "images" / f"{name}.png"), np.full((80, 100, 3), 40, np.uint8))
    box = {"x1": 100.0, "y1": 100.0, "x2": 300.0, "y2": 300.0, "label": "opacity"}
    far = {"x1": 600.0, "y1": 500.0, "x2": 800.0, "y2": 700.0, "label": "opacity"}
    index = pd.DataFrame({"id": list("abc"), "path": [f"images/{n}.png" for n in "abc"], "split": "train",
                          "height": 800, "width": 1000, "boxes": [[box, far], [box], []]})
    write_index(index, root / "index.parquet", root=root, competition="test", task="det", classes=["opacity"])
    hit = {"x1": 110.0, "y1": 105.0, "x2": 300.0, "y2": 310.0, "score": 0.8, "label": 0}
    low = {**hit, "score": 0.05}  # below the drawn score: finds nothing
    preds = pd.DataFrame({"id": list("abc"), "fold": 0, "boxes": [[hit], [low], [hit]], "height": 800,
                          "width": 1000})
    write_predictions(preds, tmp_path / "oof.parquet", task="det", kind="oof", classes=["opacity"],
                      index=str(root / "index.parquet"))
    sections, _ = build_report([str(tmp_path / "oof.parquet")], tmp_path / "r", previews=0, worst=2)
    worst = sections[1]
    assert [(r["id"], r["missed"], r["true_boxes"]) for r in worst.rows] == [("a", 1, 2), ("b", 1, 1)]
    assert [r["score"] for r in worst.rows] == [-1, -1] and len(worst.images) == 2


def test_ink_overlay_outlines_prediction_and_truth(tmp_path: Path) -> None:
    import cv2

    from kcomp.artifacts import write_json
    from kcomp.competitions import get_competition
    from kcomp.data.layers import read_png_mask
    from kcomp.report.preview import PRED_RGB, TRUTH_RGB
    from kcomp.metrics._segmentation import fbeta_pixels
    from kcomp.report.build import build_report
    from tests.vesuvius_fixture import make_vesuvius_layout

    raw = make_vesuvius_layout(tmp_path / "raw", n_layers=2, seed=0)
    get_competition("vesuvius").prep(raw, tmp_path / "d")
    index = read_index(tmp_path / "d" / "index.parquet")
    train = index.rows("train")
    maps, truths, masks = [], [], []
    for k, row in train.iterrows():
        h, w = int(row["height"]), int(row["width"])
        mask = read_png_mask(index.file(row["mask"]), (h, w))
        truth = read_png_mask(index.file(row["inklabels"]), (h, w))
        pred = cv2.dilate(truth.astype(np.uint8), np.ones((5, 5), np.uint8)) if k == 0 else _shift(truth, 6)
        maps.append(np.where(pred > 0, 150, 10).astype(np.uint8))  # 0.59: shown at the tuned 0.55, not at 0.6
        truths.append(truth)
        masks.append(mask)
    df = pd.DataFrame({"id": list(train["id"]), "fold": [0, 1], "map_key": list(train["id"]), "y0": 0,
                       "y1": list(train["height"]), "height": list(train["height"]), "width": list(train["width"]),
                       "map": maps})
    write_predictions(df, tmp_path / "oof.parquet", task="ink", kind="oof", classes=["ink"],
                      index=str(tmp_path / "d" / "index.parquet"))
    write_json(tmp_path / "thr.json", "thresholds", {"task": "ink", "threshold": 0.55, "min_size": 0,
                                                      "oof": str(tmp_path / "oof.parquet")})
    sections, _ = build_report([str(tmp_path / "oof.parquet"), str(tmp_path / "thr.json")], tmp_path / "r",
                               previews=2, worst=2)
    direct = [fbeta_pixels((m >= 141) & mask, t, mask) for m, t, mask in zip(maps, truths, masks, strict=True)]
    assert [r["score"] for r in sections[1].rows] == pytest.approx(sorted(direct))
    img = _png(tmp_path / "r" / "oof_previews" / f"{train['id'][1]}.png")
    h, w = maps[1].shape
    panel = img[:h, :w]
    pred = (maps[1] >= 141) & masks[1]
    assert _share(panel, _boundary(pred) & ~_boundary(truths[1]), PRED_RGB) > 0.75
    assert _share(panel, _boundary(truths[1]), TRUTH_RGB) > 0.75  # drawn last


def test_predictions_without_an_index_still_report(tmp_path: Path) -> None:
    """A cls OOF file naming no index (made outside `kcomp oof`): rows scored, nothing drawn, said in a note."""
    from kcomp.report.build import build_report

    df = pd.DataFrame({"id": ["a", "b", "c"], "fold": [0, 1, 0], "probs": [[0.9, 0.1], [0.3, 0.7], [0.6, 0.4]],
                       "target": [1, 1, 0]})
    write_predictions(df, tmp_path / "oof.parquet", task="cls", kind="oof", classes=["x", "y"])
    sections, _ = build_report([str(tmp_path / "oof.parquet")], tmp_path / "r", worst=2)
    worst = sections[1]
    assert [(r["id"], r["true"], r["predicted"]) for r in worst.rows] == [("a", "y", "x"), ("c", "x", "x")]
    assert worst.images == [] and any("no index" in n for n in worst.notes)

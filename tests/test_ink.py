"""Task ink: layer selection, patch grids, the model's own normalisation, TTA inverses and seamless sliding windows,
then the whole Vesuvius chain on a miniature download."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from kcomp.data.ink_patches import window_positions
from kcomp.errors import BadUsage
from kcomp.models.ink import InkNet, parse_layers, select_layers
from kcomp.tasks import get_task
from tests.conftest import run_chain
from tests.vesuvius_fixture import make_vesuvius_layout


def test_5x7_selects_the_middle_35_of_65_layers():
    assert select_layers(65, *parse_layers("5x7")) == list(range(15, 50))
    assert select_layers(65, 6, 6) == list(range(14, 50))
    assert select_layers(65, 5, 7, start=20) == list(range(20, 55))
    with pytest.raises(BadUsage, match="needs 70 layers"):
        select_layers(65, 7, 10)
    with pytest.raises(BadUsage, match="--layer-start 40"):
        select_layers(65, 5, 7, start=40)
    with pytest.raises(BadUsage, match="expected GxL"):
        parse_layers("5by7")


def test_window_grid_covers_the_mask_and_skips_empty_windows():
    mask = np.zeros((100, 130), dtype=bool)
    mask[10:60, 20:90] = True
    pos = window_positions(mask, 32, 16)
    covered = np.zeros_like(mask)
    for y, x in pos:
        covered[y:y + 32, x:x + 32] = True
        assert mask[y:y + 32, x:x + 32].any()
    assert covered[mask].all()
    assert (pos[:, 0] + 32 <= 100).all() and (pos[:, 1] + 32 <= 130).all()


def test_model_normalises_each_patch_itself():
    torch.manual_seed(0)
    model = InkNet("resnet18", 2, 3).eval()
    x = torch.rand(2, 6, 64, 64) * 1000 + 100
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x * 7 + 5000), rtol=1e-3, atol=1e-3)
    assert model(x).shape == (2, 64, 64)


class _Pointwise(torch.nn.Module):
    """Translation-equivariant, depth-symmetric stand-in: logits from each pixel's mean intensity over layers."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float().mean(1) - 50.0) / 20.0


def test_ink_tta_inverts_every_view():
    x = torch.rand(3, 4, 32, 32) * 100
    task, model = get_task("ink"), _Pointwise()
    expected = model(x).sigmoid()
    for n in (1, 2, 4, 8):
        torch.testing.assert_close(task.predict(model, x, n), expected)


def test_ink_tta_runs_under_bf16_autocast_on_float16_tiles():
    """Tiles reach the model as float16; bf16 autocast (the GPU default where supported) used to make the views'
    concatenation raise."""
    x = (torch.rand(3, 4, 32, 32) * 100).half()
    task, model = get_task("ink"), _Pointwise()
    expected = model(x).sigmoid()
    for n in (1, 2, 4, 8):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            torch.testing.assert_close(task.predict(model, x, n), expected)


def test_sliding_window_blend_has_no_seams():
    from kcomp.infer.sliding import predict_region

    class Stack:
        n_layers = 2

        def __init__(self, img: np.ndarray) -> None:
            self.img = img

        def read(self, layers, y0, y1, x0, x1):
            out = np.zeros((len(layers), y1 - y0, x1 - x0), dtype=np.uint16)
            src = self.img[max(y0, 0):y1, max(x0, 0):x1]
            out[:, : src.shape[0], : src.shape[1]] = src
            return out

    rng = np.random.default_rng(0)
    img = (rng.uniform(0, 100, (130, 75)) * 256).astype(np.uint16)  # tiles see img/256
    mask = np.ones(img.shape, dtype=bool)
    mask[:5] = False
    mask[40:80] = False  # a gap taller than a tile: the band must skip it
    out = predict_region(_Pointwise(), get_task("ink"), Stack(img), [0, 1], mask, 0, patch=32, stride=16, tta=8,
                         batch_size=4, device=torch.device("cpu"), dtype=None, workers=0)
    expected = torch.sigmoid((torch.from_numpy(img.astype(np.float32) / 256) - 50) / 20).numpy()
    expected = np.rint(expected * 255).astype(np.uint8)
    expected[~mask] = 0
    assert np.abs(out.astype(int) - expected.astype(int)).max() <= 1


@pytest.fixture(scope="module")
def vesuvius_raw(tmp_path_factory):
    return make_vesuvius_layout(tmp_path_factory.mktemp("vesuvius") / "raw",
                                fragments={"1": (128, 96), "2": (160, 96), "3": (128, 112)}, n_layers=16)


def test_vesuvius_raw_to_submission(vesuvius_raw, tmp_path):
    d, run = tmp_path / "d", tmp_path / "runs" / "ink"
    steps = [
        ("prep", "vesuvius", vesuvius_raw, "-o", d),
        ("split", d / "index.parquet", "-o", d / "folds.parquet", "--folds", "3"),
        ("train", "ink", "--folds", d / "folds.parquet", "--fold", "0", "--layers", "2x4", "--patch", "64",
         "--epochs", "2", "--batch-size", "8", "--lr", "2e-3", "--workers", "0", "--no-pretrained", "-o", run),
        ("oof", run, "-o", tmp_path / "oof.parquet", "--tta", "8", "--workers", "0", "--json"),
        ("tune-threshold", tmp_path / "oof.parquet", "-o", tmp_path / "thr.json", "--downscale", "4"),
        ("tta", run, "-o", tmp_path / "pred.parquet", "--tta", "8", "--workers", "0"),
        ("submit", "vesuvius", tmp_path / "pred.parquet", "--thresholds", tmp_path / "thr.json", "--sample",
         vesuvius_raw / "sample_submission.csv", "-o", tmp_path / "sub.csv"),
    ]
    outs = run_chain(steps, tmp_path)
    folds = pd.read_parquet(d / "folds.parquet")
    assert set(folds[folds["split"] == "train"]["fold"]) == {0, 1, 2}  # one fragment per fold
    oof = json.loads(outs["oof"])
    assert 0.0 <= oof["score"] <= 1.0
    thr = json.loads((tmp_path / "thr.json").read_text())
    assert 0 < thr["threshold"] < 1 and thr["min_size"] >= 0 and thr["score"] >= 0
    maps = np.load(tmp_path / "pred.npz")
    assert maps["a"].dtype == np.uint8 and maps["a"].shape == (64, 72)
    sub = pd.read_csv(tmp_path / "sub.csv", keep_default_na=False)
    assert list(sub.columns) == ["Id", "Predicted"] and list(sub["Id"].astype(str)) == ["a"]
    from kcomp.formats.rle import decode

    decoded = decode(sub["Predicted"][0], (64, 72), order="row")
    assert decoded.shape == (64, 72)


def test_neg_fraction_keeps_every_inked_window_and_drops_empty_ones():
    from kcomp.data.ink_patches import Fragment, InkPatches

    mask = np.ones((128, 128), dtype=bool)
    labels = np.zeros_like(mask)
    labels[10:20, 10:20] = True
    frag = Fragment("f", None, mask, labels, 0)
    full = InkPatches([frag], layers=[0], patch=32, stride=16, train=True)
    half = InkPatches([frag], layers=[0], patch=32, stride=16, train=True, neg_fraction=0.0)
    inked = [tuple(p) for p in full.positions if labels[p[1]:p[1] + 32, p[2]:p[2] + 32].any()]
    assert sorted(map(tuple, half.positions)) == sorted(inked) and len(full) > len(half) > 0

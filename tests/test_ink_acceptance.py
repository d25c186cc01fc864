"""Issue acceptance for task ink: the whole Vesuvius chain on a miniature layout with the real 65 layers and default
options (slow), the layer layouts that fit 65 layers and the one that does not (fast), and the layer reader that keeps
resident memory to the window (fast)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from kcomp.data.layers import LayerStack
from tests.conftest import run_chain, run_cli
from tests.vesuvius_fixture import make_vesuvius_layout


@pytest.mark.slow
def test_issue_chain_on_a_65_layer_layout(tmp_path: Path):
    sizes = {"a": (240, 272), "b": (208, 256)}
    raw = make_vesuvius_layout(tmp_path / "raw", fragments={"20": (256, 224), "21": (288, 256)}, test=sizes,
                               n_layers=65, seed=7)
    d, run = tmp_path / "d", tmp_path / "runs" / "ink"
    steps = [
        ("prep", "vesuvius", raw, "-o", d),
        ("split", d / "index.parquet", "-o", d / "folds.parquet", "--folds", "2", "--strategy", "group"),
        ("train", "ink", "--folds", d / "folds.parquet", "--layers", "5x7", "--patch", "64", "--model", "resnet18",
         "--epochs", "2", "--fold", "all", "--no-pretrained", "-o", run),
        ("oof", run, "-o", tmp_path / "oof.parquet", "--json"),
        ("tune-threshold", tmp_path / "oof.parquet", "-o", tmp_path / "thr.json"),
        ("tta", run, "-o", tmp_path / "pred.parquet", "--tta", "8"),
        ("submit", "vesuvius", tmp_path / "pred.parquet", "--thresholds", tmp_path / "thr.json", "--sample",
         raw / "sample_submission.csv", "-o", tmp_path / "sub.csv"),
    ]
    outs = run_chain(steps, tmp_path, timeout=1800)
    oof = json.loads(outs["oof"])
    assert oof["score"] > 0  # F0.5; predicting no ink anywhere scores 0
    from kcomp.formats.rle import decode

    sample = pd.read_csv(raw / "sample_submission.csv", keep_default_na=False)
    sub = pd.read_csv(tmp_path / "sub.csv", keep_default_na=False)
    assert list(sub.columns) == ["Id", "Predicted"]
    assert list(sub["Id"].astype(str)) == list(sample["Id"].astype(str))
    for name, pred in zip(sub["Id"].astype(str), sub["Predicted"], strict=True):
        assert decode(pred, sizes[name], order="row").shape == sizes[name]


@pytest.fixture(scope="module")
def ink65(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ink65")
    raw = make_vesuvius_layout(root / "raw", fragments={"1": (64, 64), "2": (64, 96)}, test={"t": (64, 64)},
                               n_layers=65)
    d = root / "d"
    assert run_cli("prep", "vesuvius", raw, "-o", d).code == 0
    r = run_cli("split", d / "index.parquet", "-o", d / "folds.parquet", "--folds", "2", "--strategy", "group")
    assert r.code == 0, r.stderr
    return d / "folds.parquet"


@pytest.mark.parametrize("layers", ["3x9", "6x6", "2x18"])
def test_layer_layouts_that_fit_65_layers_train(ink65: Path, tmp_path: Path, layers: str):
    r = run_cli("train", "ink", "--folds", ink65, "--fold", "0", "--layers", layers, "--patch", "32", "--epochs", "1",
                "--batch-size", "8", "--model", "resnet18", "--workers", "0", "--no-pretrained", "-o", tmp_path / "run")
    assert r.code == 0, r.stderr


def test_layer_layout_needing_70_layers_is_a_usage_error(ink65: Path, tmp_path: Path):
    r = run_cli("train", "ink", "--folds", ink65, "--fold", "0", "--layers", "7x10", "--patch", "32", "--epochs",
                "1", "--workers", "0", "-o", tmp_path / "run")
    assert r.code == 2
    errors = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(errors) == 1 and "70 layers" in errors[0], r.stderr
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


@pytest.mark.parametrize("release", [True, False], ids=["map+release", "pread"])
def test_uncompressed_windows_read_without_staying_resident(tmp_path: Path, release: bool):
    """Both raw paths (map + MADV_DONTNEED, pread) on every uncompressed layout tifffile writes: same pixels."""
    rng = np.random.default_rng(0)
    layouts = {"le": ({}, np.uint16), "be": ({"byteorder": ">"}, np.uint16), "u8": ({}, np.uint8),
               "strips": ({"rowsperstrip": 7}, np.uint16), "tiles": ({"tile": (16, 32)}, np.uint16)}
    for name, (kw, dt) in layouts.items():
        d = tmp_path / name
        d.mkdir()
        full = rng.integers(0, np.iinfo(dt).max, (3, 100, 96)).astype(dt)
        for i in range(3):
            tifffile.imwrite(d / f"{i:02d}.tif", full[i], **kw)
        s = LayerStack(d)
        s.release_pages = release
        assert (s._raw[0] is None) == (name == "tiles"), name  # tiled: decoded once instead
        pad = np.zeros((3, 300, 296), dt)
        pad[:, 100:200, 100:196] = full
        for y0, y1, x0, x1 in [(10, 42, 5, 37), (-16, 16, -16, 16), (0, 100, 0, 96), (-5, 105, -3, 100),
                               (90, 110, 0, 96), (3, 4, 95, 96)]:
            got = s.read([2, 0, 1], y0, y1, x0, x1)
            np.testing.assert_array_equal(got, pad[[2, 0, 1], y0 + 100:y1 + 100, x0 + 100:x1 + 100], err_msg=name)
        assert s._arrays == {} or name == "tiles"  # raw reads never build whole-layer arrays
        clone = pickle.loads(pickle.dumps(s))
        assert clone._handles == {} and clone._maps == {}
        np.testing.assert_array_equal(clone.read([1], 0, 8, 0, 8), full[1:2, :8, :8])
        s.close()
        np.testing.assert_array_equal(s.read([0], 50, 60, 40, 50), full[0:1, 50:60, 40:50])  # reopens
        s.close()

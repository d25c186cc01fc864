"""Vesuvius preset: raw layout -> index (incl. --split-fragment), layer-stack windows, bad inputs through the CLI,
and test maps -> RLE submission."""

from __future__ import annotations

import pickle
import shutil
from collections import deque
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import tifffile

from kcomp.artifacts.index import read_index
from kcomp.competitions import get_competition
from kcomp.competitions.vesuvius import balanced_cut, find_fragments, prep_vesuvius
from kcomp.data.layers import LayerStack, read_png_mask
from kcomp.errors import BadInput, BadUsage
from tests.conftest import run_cli
from tests.vesuvius_fixture import make_vesuvius_layout

N_LAYERS = 16


@pytest.fixture(scope="module")
def vesuvius_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_vesuvius_layout(tmp_path_factory.mktemp("vesuvius") / "raw", n_layers=N_LAYERS, seed=1)


@pytest.fixture(scope="module")
def vesuvius_index(vesuvius_raw: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("vesuvius_data")
    written = get_competition("vesuvius").prep(vesuvius_raw, out)
    assert written == [str(out / "index.parquet")]
    return out / "index.parquet"


def _copy(raw: Path, tmp: Path) -> Path:
    dst = tmp / "raw"
    shutil.copytree(raw, dst)
    return dst


# ------------------------------------------------------------------------------------------------------ prep


def test_prep_writes_one_row_per_fragment(vesuvius_index: Path, vesuvius_raw: Path):
    t = read_index(vesuvius_index)
    assert (t.competition, t.task, t.classes, t.meta["n_layers"]) == ("vesuvius", "ink", ["ink"], N_LAYERS)
    df = t.df
    for col in ("id", "fragment", "path", "mask", "inklabels", "split", "height", "width", "n_layers", "y0", "y1",
                "group"):
        assert col in df.columns, col
    assert list(df["id"]) == ["1", "2", "a"]
    assert list(df["split"]) == ["train", "train", "test"]
    assert list(df["path"]) == ["train/1/surface_volume", "train/2/surface_volume", "test/a/surface_volume"]
    assert list(df["mask"]) == ["train/1/mask.png", "train/2/mask.png", "test/a/mask.png"]
    assert list(df["inklabels"]) == ["train/1/inklabels.png", "train/2/inklabels.png", ""]
    assert list(zip(df["height"], df["width"], strict=True)) == [(96, 80), (128, 96), (64, 72)]
    assert list(df["y0"]) == [0, 0, 0] and list(df["y1"]) == [96, 128, 64]
    assert list(df["group"]) == list(df["id"]) and list(df["fragment"]) == list(df["id"])
    assert set(df["n_layers"]) == {N_LAYERS}
    # paths resolve under the raw dir through the index's root
    assert t.file(df["path"][0]) == (vesuvius_raw / "train/1/surface_volume").resolve()
    assert t.file(df["inklabels"][1]).is_file()


def test_split_fragment_cli_halves_tile_and_balance(vesuvius_raw: Path, tmp_path: Path):
    r = run_cli("prep", "vesuvius", vesuvius_raw, "-o", tmp_path / "d", "--split-fragment", "2")
    assert r.code == 0, r.stderr
    assert r.stdout.strip() == str(tmp_path / "d" / "index.parquet")
    df = read_index(tmp_path / "d" / "index.parquet").df
    assert list(df["id"]) == ["1", "2a", "2b", "a"]
    halves = df[df["fragment"] == "2"]
    assert list(halves["group"]) == ["2a", "2b"]
    (a0, a1), (b0, b1) = zip(halves["y0"], halves["y1"], strict=True)
    assert a0 == 0 and a1 == b0 and b1 == 128 and 0 < a1 < 128
    mask = read_png_mask(vesuvius_raw / "train/2/mask.png")
    top, bottom = int(mask[:a1].sum()), int(mask[a1:].sum())
    assert abs(top - bottom) <= mask.sum(axis=1).max()  # as balanced as a row boundary allows
    assert abs(top - bottom) == min(abs(int(mask[:r].sum()) - int(mask[r:].sum())) for r in range(1, 128))
    assert list(halves["mask_pixels"]) == [top, bottom]


def test_split_fragment_options(vesuvius_raw: Path, tmp_path: Path):
    comp = get_competition("vesuvius")
    comp.prep(vesuvius_raw, tmp_path / "d", split_fragment="1, 2")
    assert list(read_index(tmp_path / "d" / "index.parquet").df["id"]) == ["1a", "1b", "2a", "2b", "a"]
    prep_vesuvius(vesuvius_raw, tmp_path / "e", split_fragments={"2": 40})  # the library takes cut rows too
    df = read_index(tmp_path / "e" / "index.parquet").df
    assert list(zip(df["id"], df["y0"], df["y1"], strict=True))[1:3] == [("2a", 0, 40), ("2b", 40, 128)]
    for bad in ("a", "7", "2,,1"):
        with pytest.raises(BadUsage):
            comp.prep(vesuvius_raw, tmp_path / "f", split_fragment=bad)
    assert not (tmp_path / "f").exists()


def test_balanced_cut_and_natural_order(tmp_path: Path):
    m = np.zeros((10, 4), bool)
    m[6:] = True
    assert balanced_cut(m) == 8
    assert balanced_cut(np.zeros((9, 3), bool)) == 4
    for name in ("10", "2", "1"):
        (tmp_path / "train" / name).mkdir(parents=True)
    for name in ("b", "a"):
        (tmp_path / "test" / name).mkdir(parents=True)
    assert find_fragments(tmp_path) == [("train", "1"), ("train", "2"), ("train", "10"), ("test", "a"),
                                        ("test", "b")]


# ------------------------------------------------------------------------------------------------ LayerStack


def test_layerstack_windows_match_imread(vesuvius_raw: Path, tmp_path: Path):
    d = vesuvius_raw / "train/2/surface_volume"
    full = np.stack([tifffile.imread(d / f"{i:02d}.tif") for i in range(N_LAYERS)])
    s = LayerStack(d, expected=(128, 96))
    assert (s.n_layers, s.shape, s.dtype) == (N_LAYERS, (128, 96), np.uint16)
    assert isinstance(s.layer(0), np.memmap)
    padded = np.zeros((N_LAYERS, 128 + 200, 96 + 200), np.uint16)
    padded[:, 100:228, 100:196] = full
    layers = [7, 3, 12]
    for y0, y1, x0, x1 in [(10, 42, 5, 37), (-16, 16, -16, 16), (112, 144, 80, 112), (-5, 140, -3, 100),
                           (0, 128, 0, 96), (200, 210, 0, 10), (5, 5, 0, 4)]:
        got = s.read(layers, y0, y1, x0, x1)
        assert got.shape == (3, y1 - y0, x1 - x0) and got.dtype == np.uint16
        np.testing.assert_array_equal(got, padded[layers, y0 + 100:y1 + 100, x0 + 100:x1 + 100])
    # compressed layers cannot be memory-mapped: decoded once, same pixels
    c = tmp_path / "sv"
    c.mkdir()
    for i in range(3):
        tifffile.imwrite(c / f"{i:02d}.tif", full[i], compression="zlib")
    cs = LayerStack(c)
    np.testing.assert_array_equal(cs.read([2, 0], -4, 20, 90, 100), padded[[2, 0], 96:120, 190:200])
    # pickles without its maps (DataLoader workers), reads the same afterwards
    clone = pickle.loads(pickle.dumps(s))
    assert clone._arrays == {}
    np.testing.assert_array_equal(clone.read([1], 0, 8, 0, 8), full[1:2, :8, :8])
    with pytest.raises(BadUsage):
        s.read([N_LAYERS], 0, 4, 0, 4)
    with pytest.raises(BadInput, match="expected 100x96"):
        LayerStack(d, expected=(100, 96))


def test_read_png_mask(tmp_path: Path):
    img = np.zeros((5, 6, 3), np.uint8)
    img[1, 2] = (0, 0, 1)
    img[3, 4] = (200, 0, 0)
    cv2.imwrite(str(tmp_path / "m.png"), img)
    m = read_png_mask(tmp_path / "m.png", (5, 6))
    assert m.dtype == bool and m.sum() == 2 and m[1, 2] and m[3, 4]
    with pytest.raises(BadInput, match=r"m.png: is 5x6 \(HxW\); the layers are 6x5"):
        read_png_mask(tmp_path / "m.png", (6, 5))
    (tmp_path / "bad.png").write_bytes(b"no png")
    with pytest.raises(BadInput, match="bad.png"):
        read_png_mask(tmp_path / "bad.png")


# ------------------------------------------------------------------------------------------- bad inputs (CLI)


def _missing_layer(raw: Path) -> str:
    (raw / "train/2/surface_volume/07.tif").unlink()
    return "train/2/surface_volume/07.tif"


def _layer_other_size(raw: Path) -> str:
    tifffile.imwrite(raw / "train/1/surface_volume/05.tif", np.zeros((90, 80), np.uint16))
    return "train/1/surface_volume/05.tif: layer is 90x80"


def _mask_wrong_size(raw: Path) -> str:
    cv2.imwrite(str(raw / "test/a/mask.png"), np.full((63, 72), 255, np.uint8))
    return "test/a/mask.png: is 63x72"


def _labels_wrong_size(raw: Path) -> str:
    cv2.imwrite(str(raw / "train/1/inklabels.png"), np.full((96, 81), 255, np.uint8))
    return "train/1/inklabels.png: is 96x81"


def _labels_missing(raw: Path) -> str:
    (raw / "train/1/inklabels.png").unlink()
    return "train/1/inklabels.png"


def _mask_missing(raw: Path) -> str:
    (raw / "train/2/mask.png").unlink()
    return "train/2/mask.png"


def _not_a_tiff(raw: Path) -> str:
    (raw / "train/1/surface_volume/03.tif").write_bytes(b"this is not a TIFF file\n" * 10)
    return "train/1/surface_volume/03.tif: not a readable TIFF"


def _no_fragments(raw: Path) -> str:
    shutil.rmtree(raw)
    raw.mkdir()
    (raw / "train").mkdir()
    return "no fragments found"


def _fewer_layers(raw: Path) -> str:
    (raw / "test/a/surface_volume/15.tif").unlink()
    return "test/a/surface_volume: has 15 layers"


# through the real CLI: the cases a user meets most
BAD_CLI = [_missing_layer, _layer_other_size, _mask_wrong_size, _labels_missing, _not_a_tiff, _no_fragments]
# the same error path, checked in-process to keep the suite fast
BAD_LIB = [_labels_wrong_size, _mask_missing, _fewer_layers]


@pytest.mark.parametrize("damage", BAD_CLI, ids=[f.__name__.strip("_") for f in BAD_CLI])
def test_bad_input_exits_2_naming_the_file(damage, vesuvius_raw: Path, tmp_path: Path):
    raw = _copy(vesuvius_raw, tmp_path)
    expected = damage(raw)
    out = tmp_path / "out"
    r = run_cli("prep", "vesuvius", raw, "-o", out)
    assert r.code == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kcomp: error: "), r.stderr
    assert expected in lines[0], lines[0]
    assert r.stdout == "" and not out.exists()


@pytest.mark.parametrize("damage", BAD_LIB, ids=[f.__name__.strip("_") for f in BAD_LIB])
def test_bad_input_raises_naming_the_file(damage, vesuvius_raw: Path, tmp_path: Path):
    raw = _copy(vesuvius_raw, tmp_path)
    expected = damage(raw)
    out = tmp_path / "out"
    with pytest.raises(BadInput) as e:
        get_competition("vesuvius").prep(raw, out)
    assert expected in str(e.value) and not out.exists()


# ---------------------------------------------------------------------------------------------------- submit


def _components_reference(binary: np.ndarray, min_size: int) -> np.ndarray:
    """8-connected flood fill, independent of cv2."""
    h, w = binary.shape
    seen = np.zeros_like(binary)
    keep = np.zeros_like(binary)
    for sy, sx in zip(*np.nonzero(binary), strict=True):
        if seen[sy, sx]:
            continue
        comp, queue = [], deque([(sy, sx)])
        seen[sy, sx] = True
        while queue:
            y, x = queue.popleft()
            comp.append((y, x))
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    ny, nx = y + dy, x + dx
                    if 0 <= ny < h and 0 <= nx < w and binary[ny, nx] and not seen[ny, nx]:
                        seen[ny, nx] = True
                        queue.append((ny, nx))
        if len(comp) >= min_size:
            for y, x in comp:
                keep[y, x] = True
    return keep


def _test_map(shape: tuple[int, int]) -> np.ndarray:
    rng = np.random.default_rng(5)
    prob = cv2.GaussianBlur(rng.uniform(0, 255, shape).astype(np.float32), (0, 0), 3)
    prob = (prob - prob.min()) / (prob.max() - prob.min()) * 255
    prob = prob.astype(np.uint8)
    prob[::9, ::11] = 250  # isolated specks, dropped by min_size
    prob[0:6, 0:6] = 255  # a blob partly outside the papyrus mask
    return prob


def _write_preds(path: Path, index: Path, maps: dict[str, np.ndarray]) -> Path:
    from kcomp.artifacts.predictions import write_predictions

    np.savez(path.with_name("maps.npz"), **maps)
    df = pd.DataFrame({"id": list(maps), "fold": -1, "map_key": list(maps)})
    write_predictions(df, path, task="ink", kind="test", classes=["ink"], maps_file="maps.npz", index=str(index))
    return path


def test_submit_thresholds_filters_masks_and_encodes(vesuvius_index: Path, vesuvius_raw: Path, tmp_path: Path):
    from kcomp.artifacts.predictions import read_predictions
    from kcomp.formats.rle import decode

    prob = _test_map((64, 72))
    preds = read_predictions(_write_preds(tmp_path / "test.parquet", vesuvius_index, {"a": prob}))
    mask = cv2.imread(str(vesuvius_raw / "test/a/mask.png"), cv2.IMREAD_GRAYSCALE) > 0
    comp = get_competition("vesuvius")
    assert comp.id_column == "Id"
    for thresholds, (thr, min_size) in [({"threshold": 0.6, "min_size": 5}, (0.6, 5)), (None, (0.5, 0)),
                                        ({"classes": {"ink": {"threshold": 0.7, "min_size": 3}}}, (0.7, 3))]:
        sub = comp.submit([preds], thresholds=thresholds)
        assert list(sub.columns) == ["Id", "Predicted"] and list(sub["Id"]) == ["a"]
        got = decode(sub["Predicted"][0], (64, 72), order="row")
        binary = prob.astype(np.float64) / 255 >= thr
        want = _components_reference(binary, min_size) & mask
        np.testing.assert_array_equal(np.asarray(got, bool), want)
        if min_size:  # the case is not trivial: both the filter and the mask removed pixels
            assert (binary & mask & ~want).any() and (_components_reference(binary, min_size) & ~mask).any()


def test_submit_cli_matches_sample(vesuvius_index: Path, vesuvius_raw: Path, tmp_path: Path):
    pred = _write_preds(tmp_path / "test.parquet", vesuvius_index, {"a": _test_map((64, 72))})
    r = run_cli("submit", "vesuvius", pred, "--sample", vesuvius_raw / "sample_submission.csv", "-o",
                tmp_path / "sub.csv")
    assert r.code == 0, r.stderr
    sub = pd.read_csv(tmp_path / "sub.csv", dtype=str, keep_default_na=False)
    assert list(sub.columns) == ["Id", "Predicted"] and list(sub["Id"]) == ["a"] and sub["Predicted"][0]


def test_submit_rejects_wrong_map_size(vesuvius_index: Path, tmp_path: Path):
    from kcomp.artifacts.predictions import read_predictions

    preds = read_predictions(_write_preds(tmp_path / "t.parquet", vesuvius_index,
                                          {"a": np.zeros((64, 70), np.uint8)}))
    with pytest.raises(BadInput, match="64x70; the fragment is 64x72"):
        get_competition("vesuvius").submit([preds], thresholds=None)

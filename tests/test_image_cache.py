"""`prep --size N` decoded-image cache: identical pixels, found through folds written elsewhere, used only when it
is large enough, and clear errors when it is gone."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from kcomp.artifacts.index import read_index
from kcomp.data.images import read_square
from kcomp.errors import BadInput
from tests.conftest import run_cli


@pytest.fixture(scope="module")
def cached(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`prep demo` generating its images with OpenCV and then forking cache workers: the fork used to hang in the
    children's first cv2 call (OpenCV's thread pool copied mid-life), hence the timeout."""
    root = tmp_path_factory.mktemp("cache")
    r = run_cli("prep", "demo", "-o", root / "data", "--size", "48", "--workers", "2", timeout=120)
    assert r.code == 0, r.stderr
    r = run_cli("split", root / "data" / "index.parquet", "--folds", "3", "-o", root / "elsewhere" / "folds.parquet")
    assert r.code == 0, r.stderr
    return root


def test_cache_holds_each_row_decoded_as_the_files_would_be(cached: Path) -> None:
    table = read_index(cached / "data" / "index.parquet")
    assert table.meta["image_cache"] == {"path": "cache/images_48.npy", "size": 48}
    arr = np.load(cached / "data" / "cache" / "images_48.npy")
    assert arr.shape == (len(table.df), 48, 48, 3) and arr.dtype == np.uint8
    assert table.df["cache_row"].tolist() == list(range(len(table.df)))
    for row, path in zip(table.df["cache_row"], table.df["path"], strict=True):
        np.testing.assert_array_equal(arr[row], read_square(table.file(path), 48))


def test_folds_elsewhere_find_the_same_cache(cached: Path) -> None:
    folds = read_index(cached / "elsewhere" / "folds.parquet")
    assert folds.meta["image_cache"]["path"] == "../data/cache/images_48.npy"
    assert folds.relative_file(folds.meta["image_cache"]["path"]) == (cached / "data" / "cache" /
                                                                     "images_48.npy").resolve()


def _dataset(table, img_size: int, train: bool = False):
    from kcomp.tasks import get_task
    from kcomp.tasks.options import TrainOptions

    task = get_task("cls")
    opts = TrainOptions(img_size=img_size, aug="light")
    setup = task.setup(table, opts)
    return task.dataset(table, table.rows("train"), opts, setup, train=train)


def test_datasets_read_the_cache_when_it_is_large_enough(cached: Path) -> None:
    folds = read_index(cached / "elsewhere" / "folds.parquet")
    ds = _dataset(folds, 48)
    assert ds.cache is not None and len(ds.cache) == len(ds)
    x, y = ds[3]
    assert x.shape == (3, 48, 48) and y == ds.targets_array()[3]
    np.testing.assert_array_equal(x.permute(1, 2, 0).numpy(), read_square(ds.files[3], 48))
    assert _dataset(folds, 32).cache is not None  # a smaller model input is resized from the cache
    assert _dataset(folds, 64).cache is None  # never upscaled: the files are decoded instead
    xs = [_dataset(folds, 32, train=True)[(5, 77)][0] for _ in range(2)]  # seeded augmentations replay exactly
    assert xs[0].shape == (3, 32, 32) and bool((xs[0] == xs[1]).all())


def test_cache_survives_pickling_for_dataloader_workers(cached: Path) -> None:
    import pickle

    ds = _dataset(read_index(cached / "data" / "index.parquet"), 48)
    _ = ds[0]  # opens the memory map in this process
    clone = pickle.loads(pickle.dumps(ds))
    assert clone.cache._arr is None  # the worker maps the file itself; nothing copied
    np.testing.assert_array_equal(clone[1][0].numpy(), ds[1][0].numpy())


def test_rerun_reuses_a_complete_cache(cached: Path) -> None:
    cache = cached / "data" / "cache" / "images_48.npy"
    before = cache.stat().st_mtime_ns
    r = run_cli("prep", "demo", "-o", cached / "data", "--size", "48", "--workers", "0")
    assert r.code == 0, r.stderr
    assert cache.stat().st_mtime_ns == before
    assert not [p for p in cache.parent.iterdir() if p.name.startswith(".")]  # no temporary left behind


def test_missing_or_stale_cache_is_bad_input(cached: Path, tmp_path: Path) -> None:
    import shutil

    data = tmp_path / "data"
    shutil.copytree(cached / "data", data, ignore=shutil.ignore_patterns("raw"))
    os.symlink(cached / "data" / "raw", data / "raw")
    table = read_index(data / "index.parquet")
    os.remove(data / "cache" / "images_48.npy")
    with pytest.raises(BadInput, match="images_48.npy.*missing"):
        _dataset(table, 48)
    np.save(data / "cache" / "images_48.npy", np.zeros((3, 48, 48, 3), np.uint8))
    with pytest.raises(BadInput, match="does not match the index"):
        _dataset(table, 48)


@pytest.mark.parametrize("size", ["8", "5000"])
def test_size_out_of_range_is_bad_usage(cached: Path, tmp_path: Path, size: str) -> None:
    r = run_cli("prep", "cassava", cached / "data" / "raw", "-o", tmp_path / "d", "--size", size)
    assert r.code == 2 and f"--size {size}" in r.last_error_line


def test_seg_items_are_identical_from_cache_and_files(tmp_path: Path) -> None:
    """Seg reads images exactly as the cache stores them, so a run gives the same inputs either way."""
    from tests.clouds_fixture import make_clouds_layout

    layout = make_clouds_layout(tmp_path / "raw", n_train=4, n_test=2, size=(140, 210), seed=1)
    for out, extra in (("plain", []), ("cached", ["--size", "64", "--workers", "0"])):
        assert run_cli("prep", "clouds", layout.raw, "-o", tmp_path / out, *extra).code == 0
    from kcomp.tasks import get_task
    from kcomp.tasks.options import TrainOptions

    task = get_task("seg")
    items = []
    for out in ("plain", "cached"):
        table = read_index(tmp_path / out / "index.parquet")
        opts = TrainOptions(task="seg", img_size=64, aug="none")
        ds = task.dataset(table, table.rows("train"), opts, task.setup(table), train=False)
        assert (ds.cache is not None) == (out == "cached")
        items.append([ds[i] for i in range(len(ds))])
    for (xa, ma), (xb, mb) in zip(*items, strict=True):
        assert bool((xa == xb).all()) and bool((ma == mb).all())


@pytest.mark.parametrize("shape", [(5, 7, 3), (5, 7), (4, 6, 4)])
@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_chw_tensor_equals_torchs_permute(shape: tuple[int, ...], dtype: type) -> None:
    """The numpy transpose the datasets use gives what `permute(2, 0, 1).contiguous()` gave: same values, dtype and
    contiguous layout."""
    import torch

    from kcomp.data.images import chw_tensor

    img = (np.arange(np.prod(shape)) % 251).astype(dtype).reshape(shape)
    got = chw_tensor(img)
    want = torch.from_numpy(img if img.ndim == 3 else img[..., None]).permute(2, 0, 1).contiguous()
    assert got.is_contiguous() and got.dtype == want.dtype and torch.equal(got, want)

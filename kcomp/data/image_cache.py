"""A decoded-image cache written by `prep --size N`: every image once, as N x N x 3 uint8, in one `.npy` file.

Why: decoding an 800x600 JPEG costs milliseconds of CPU even at libjpeg's reduced scales (benchmarks/RESULTS.md), and on
a machine whose cores also feed the model (or on a GPU box with few cores per GPU) that is what keeps `train`, `oof` and
`tta` below the model's speed. A row of a memory-mapped array costs a page-cache copy. The file is written by worker
processes into its own rows (no locks), under a temporary name renamed at the end, so an index never points to a partial
cache.

The index records it as metadata `image_cache = {"path": <relative to the index file>, "size": N}` plus a column
`cache_row` (the row of each index row), so folds and filtered tables keep finding their images.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kcomp import console
from kcomp.errors import BadInput
from kcomp.options import CACHE_SIZE, WORKERS

if TYPE_CHECKING:
    import numpy as np

    from kcomp.data.pool import WorkerPool

CACHE_DIR = "cache"
ROW_COLUMN = "cache_row"
META_KEY = "image_cache"


def cache_name(size: int) -> str:
    return f"{CACHE_DIR}/images_{size}.npy"


def add_image_cache(df: Any, root: Path, out: Path, size: int | None, workers: int | None) -> dict[str, Any]:
    """Cache the images of index rows `df` (paths relative to `root`) under `out` and add the `cache_row` column;
    returns the index metadata that records the cache ({} when `size` is None: no cache asked for)."""
    from kcomp.data.pool import WorkerPool, default_workers

    CACHE_SIZE.check("size", size)  # prep's own rules
    WORKERS.check("workers", workers)
    if size is None:
        return {}
    with WorkerPool(default_workers() if workers is None else workers) as pool:
        build_image_cache([root / p for p in df["path"]], out / cache_name(size), size, pool)
    df[ROW_COLUMN] = range(len(df))
    return {META_KEY: {"path": cache_name(size), "size": size}}


def build_image_cache(files: Sequence[Path], out: Path, size: int, pool: WorkerPool) -> None:
    """Decode `files` into `out` (N, size, size, 3) uint8, row i = files[i]; reuses an existing complete cache
    of the same files (recorded beside it), so re-running `prep` costs nothing."""
    import numpy as np

    listing = out.with_suffix(".files")
    names = "\n".join(map(str, files))
    if out.is_file() and listing.is_file() and listing.read_text() == names and _shape(out) == (len(files), size,
                                                                                              size, 3):
        console.log(f"image cache {out} is up to date ({len(files)} images at {size} px)")
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(files), size, size, 3)).flush()
        how = f"{min(pool.workers, len(files))} worker process(es)" if pool.workers else "this process"
        console.log(f"caching {len(files)} images at {size}x{size} px in {out} ({how})")
        errors = pool.map(_cache_row, [(str(tmp), i, str(f), size) for i, f in enumerate(files)],
                          f"decoding -> {size}px cache")
        bad = [(f, e) for f, e in zip(files, errors, strict=True) if e]
        if bad:
            more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
            raise BadInput(f"cannot cache {bad[0][0]}: {bad[0][1]}{more}")
        os.replace(tmp, out)
        tmp_listing = listing.with_name(f".{listing.name}.tmp-{os.getpid()}")
        tmp_listing.write_text(names)
        os.replace(tmp_listing, listing)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _shape(path: Path) -> tuple[int, ...] | None:
    import numpy as np

    try:
        return tuple(np.load(path, mmap_mode="r").shape)
    except (OSError, ValueError):
        return None


_OPEN: dict[str, Any] = {}


def _cache_row(job: tuple[str, int, str, int]) -> str | None:
    """Write one image into its row; None or the reason it failed (never raises, so one file cannot stop a pool)."""
    import numpy as np

    from kcomp.data.images import read_square

    path, row, src, size = job
    try:
        if path not in _OPEN:  # one memory map per worker process, not per image
            _OPEN.clear()
            _OPEN[path] = np.load(path, mmap_mode="r+")
        _OPEN[path][row] = read_square(src, size)
    except BadInput as e:
        return str(e).removeprefix(f"{src}: ")
    except Exception as e:  # noqa: BLE001 - report, do not kill the pool
        return f"{type(e).__name__}: {e}"
    return None


class CachedImages:
    """Rows of an image cache, memory-mapped on first access: DataLoader workers map the file themselves (a
    pickled memmap would be copied into every worker) and share the OS page cache."""

    def __init__(self, path: Path, rows: Sequence[int], size: int) -> None:
        self.path, self.rows, self.size = Path(path), [int(r) for r in rows], int(size)
        self._arr: Any = None

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> np.ndarray:
        import numpy as np

        if self._arr is None:
            self._arr = np.load(self.path, mmap_mode="r")
        return np.array(self._arr[self.rows[i]])  # a private copy: augmentations may write to it

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_arr": None}


def cached_images(table: Any, rows: Any, img_size: int) -> CachedImages | None:
    """The cache rows for `rows` of an index/folds table when it has a cache at least `img_size` px (a smaller one
    would upscale: the files are decoded instead, and the log says so); None without a cache."""
    info = table.meta.get(META_KEY)
    if not info:
        return None
    size = int(info["size"])
    path = table.relative_file(info["path"])
    if size < img_size:
        _log_once(f"the image cache ({size} px) is smaller than --img-size {img_size}: decoding the image files")
        return None
    if ROW_COLUMN not in rows.columns:
        raise BadInput(f"has image_cache metadata but no {ROW_COLUMN} column", path=table.source)
    shape = _shape(path)
    if shape is None:
        raise BadInput(f"image cache {path} (from the index metadata) is missing or unreadable; re-run prep",
                       path=table.source)
    top = int(rows[ROW_COLUMN].max()) if len(rows) else -1
    if shape[1:] != (size, size, 3) or top >= shape[0]:
        raise BadInput(f"image cache {path} has shape {shape}, which does not match the index "
                       f"({size} px, rows up to {top}); re-run prep", path=table.source)
    _log_once(f"images from the {size} px cache {path}")
    return CachedImages(path, rows[ROW_COLUMN].tolist(), size)


_LOGGED: set[str] = set()


def _log_once(msg: str) -> None:
    if msg not in _LOGGED:
        _LOGGED.add(msg)
        console.log(msg)

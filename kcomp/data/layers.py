"""TIFF layer stacks (Vesuvius `surface_volume/00.tif … 64.tif`) read window by window, never whole into RAM.

A real fragment is 65 layers of up to 8181 x 6330 uint16 (~6.7 GB); training reads 224 px patches from a few
consecutive layers. When a layer's pixels are stored uncompressed and contiguously, as the competition's files are,
a window is copied out of a read-only memory map and the layer's pages are then released from the process
(MADV_DONTNEED over the whole map; where madvise is missing, the rows are read with one positioned read instead).
Pages touched through a map would otherwise stay resident and count in RSS, so reading a whole fragment would grow
the process with its area; this way resident memory grows with the window, and the kernel's page cache (not the
process) keeps the file hot.
Other layers (compressed, tiled) are decoded once on first use and cached. Construction reads only TIFF headers.
"""

from __future__ import annotations

import mmap
import os
import re
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from kcomp.errors import BadInput, BadUsage

LAYER_NAME = re.compile(r"^(\d+)\.tiff?$", re.IGNORECASE)
DTYPES = (np.dtype(np.uint16), np.dtype(np.uint8))
RELEASE_PAGES = hasattr(mmap.mmap, "madvise") and hasattr(mmap, "MADV_DONTNEED")


def layer_files(directory: Path) -> list[Path]:
    """`NN.tif` files of a layer directory, sorted by number; BadInput when none or when numbering has a gap."""
    directory = Path(directory)
    if not directory.is_dir():
        raise BadInput("layer directory not found (expected NN.tif files)", path=directory)
    found: dict[int, Path] = {}
    for p in directory.iterdir():
        m = LAYER_NAME.match(p.name)
        if m is None or not p.is_file():
            continue
        n = int(m.group(1))
        if n in found:
            raise BadInput(f"layer {n} is given twice ({found[n].name} and {p.name})", path=directory)
        found[n] = p
    if not found:
        raise BadInput("no layers (expected 00.tif, 01.tif, ...)", path=directory)
    numbers = sorted(found)
    missing = [n for n in range(numbers[-1] + 1) if n not in found]
    if missing:
        width = max(len(LAYER_NAME.match(p.name).group(1)) for p in found.values())  # type: ignore[union-attr]
        suffix = found[numbers[0]].suffix
        name = f"{missing[0]:0{width}d}{suffix}"
        more = f" ({len(missing)} missing in all)" if len(missing) > 1 else ""
        raise BadInput(f"layer {missing[0]} is missing: layers 0..{numbers[-1]} expected{more}",
                       path=directory / name)
    return [found[n] for n in numbers]


def _header(path: Path) -> tuple[tuple[int, ...], np.dtype, tuple[int, np.dtype] | None]:
    """(shape, dtype, raw) of the first page; raw = (byte offset of pixel 0, on-disk dtype) when its pixels lie
    uncompressed, in row order and contiguously in the file (pixel (y, x) at offset + (y*W + x)*itemsize)."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            dtype = np.dtype(page.dtype)
            raw = None
            if (len(page.shape) == 2 and page.is_final and page.dataoffsets and page.samplesperpixel == 1
                    and page.bitspersample == 8 * dtype.itemsize and (322 not in page.tags
                                                                     or page.tilewidth == page.imagewidth)):
                raw = (int(page.dataoffsets[0]), dtype.newbyteorder(tif.byteorder))
            return tuple(page.shape), dtype, raw
    except (tifffile.TiffFileError, ValueError, IndexError, OSError, struct.error) as e:
        raise BadInput(f"not a readable TIFF ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})",
                       path=path) from None


class LayerStack:
    """`surface_volume/00.tif … NN.tif` of one fragment, read as windows `(layers, y, x)`.

    Windows of uncompressed, contiguous layers are copied from a map whose pages are released right after
    (or read with pread), so resident memory stays O(window) however large the fragment; other layers are decoded
    once, lazily, and cached. Maps/files open lazily and stay open; pickles without them (workers re-open).
    """

    release_pages: bool = RELEASE_PAGES  # False: pread path (set per instance in tests)

    def __init__(self, directory: Path, *, expected: tuple[int, int] | None = None) -> None:
        self.directory = Path(directory)
        self.files = layer_files(self.directory)
        shape0, dtype0, raw0 = _header(self.files[0])
        if len(shape0) != 2:
            raise BadInput(f"layer has shape {shape0}; expected one 2-D greyscale image", path=self.files[0])
        if dtype0 not in DTYPES:
            raise BadInput(f"layer has dtype {dtype0}; expected uint16 or uint8", path=self.files[0])
        if expected is not None and tuple(expected) != shape0:
            raise BadInput(f"layer is {shape0[0]}x{shape0[1]} (HxW); expected {expected[0]}x{expected[1]}",
                           path=self.files[0])
        raws = [raw0]
        for f in self.files[1:]:
            shape, dtype, raw = _header(f)
            raws.append(raw)
            if shape != shape0:
                what = "x".join(map(str, shape))
                raise BadInput(f"layer is {what} (HxW); {self.files[0].name} is {shape0[0]}x{shape0[1]}", path=f)
            if dtype != dtype0:
                raise BadInput(f"layer has dtype {dtype}; {self.files[0].name} has {dtype0}", path=f)
        self.n_layers: int = len(self.files)
        self.shape: tuple[int, int] = (int(shape0[0]), int(shape0[1]))
        self.dtype: np.dtype = dtype0
        self._raw: list[tuple[int, np.dtype] | None] = raws
        self._arrays: dict[int, np.ndarray] = {}
        self._handles: dict[int, BinaryIO] = {}
        self._maps: dict[int, mmap.mmap] = {}

    def __repr__(self) -> str:
        return f"LayerStack({str(self.directory)!r}, n_layers={self.n_layers}, shape={self.shape}, dtype={self.dtype})"

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_arrays": {}, "_handles": {}, "_maps": {}}

    def _check(self, i: int) -> None:
        if not 0 <= i < self.n_layers:
            raise BadUsage(f"layer {i} out of range 0..{self.n_layers - 1} of {self.directory}")

    def layer(self, i: int) -> np.ndarray:
        """Layer `i` as an HxW array: a read-only memory map when possible, else the decoded page (cached).

        Whole-layer access; `read` does not use it for uncompressed layers (touched map pages stay resident)."""
        self._check(i)
        arr = self._arrays.get(i)
        if arr is None:
            arr = self._open(self.files[i])
            self._arrays[i] = arr
        return arr

    def _open(self, path: Path) -> np.ndarray:
        import tifffile

        try:
            arr = tifffile.memmap(path, mode="r")
        except (ValueError, tifffile.TiffFileError, OSError):
            try:
                arr = tifffile.imread(path, key=0)
            except Exception as e:  # noqa: BLE001 - any decoder failure is a bad file; name it
                raise BadInput(f"cannot decode TIFF pixels ({type(e).__name__})", path=path) from None
        if arr.shape != self.shape or arr.dtype != self.dtype:
            raise BadInput(f"pixels are {arr.shape} {arr.dtype}; header said {self.shape} {self.dtype}", path=path)
        return arr

    def read(self, layers: Sequence[int], y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """`(len(layers), y1-y0, x1-x0)` in the file dtype; the part of the window outside the image is zeros."""
        if y1 < y0 or x1 < x0:
            raise ValueError(f"empty or inverted window y {y0}:{y1}, x {x0}:{x1}")
        h, w = self.shape
        out = np.zeros((len(layers), y1 - y0, x1 - x0), dtype=self.dtype)
        cy0, cy1, cx0, cx1 = max(y0, 0), min(y1, h), max(x0, 0), min(x1, w)
        if cy0 >= cy1 or cx0 >= cx1:
            return out
        for k, i in enumerate(layers):
            i = int(i)
            self._check(i)
            raw = self._raw[i]
            if raw is None:
                out[k, cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0] = self.layer(i)[cy0:cy1, cx0:cx1]
            else:
                self._read_raw(i, raw, out[k, cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0], cy0, cx0)
        return out

    def _handle(self, i: int) -> BinaryIO:
        f = self._handles.get(i)
        if f is None:
            try:
                f = open(self.files[i], "rb", buffering=0)  # noqa: SIM115 - kept open; closed by close() or GC
            except OSError as e:
                raise BadInput(f"cannot open ({e.strerror})", path=self.files[i]) from None
            self._handles[i] = f
        return f

    def _read_raw(self, i: int, raw: tuple[int, np.dtype], dst: np.ndarray, y: int, x: int) -> None:
        """Fill `dst` (rows y.., columns x.. of layer i) from the file, leaving no page of the layer resident.

        With madvise (Linux, macOS): copy from a read-only map of the layer, then drop the whole map from this process's
        page tables (MADV_DONTNEED; the kernel's page cache keeps the pages, so the next read is a minor fault), a small
        cost next to the window's read. The whole map, not the window's byte range: a fault maps more than the page it
        touches (fault-around, and whole large folios of the page cache on recent kernels), and pages mapped before the
        window's first row were never released by the next windows (tile rows move down), leaving about half of every
        layer resident after a fragment (`ink tta memory` in benchmarks/RESULTS.md). Releasing an unmapped range costs a
        page-table walk, nothing per page. Without madvise: one positioned read of the window's full rows."""
        offset, disk = raw
        w = self.shape[1]
        rows, cols = dst.shape
        if self.release_pages:
            m = self._maps.get(i)
            if m is None:
                m = self._maps[i] = self._map(i)
            arr = np.frombuffer(m, dtype=disk, count=self.shape[0] * w, offset=offset).reshape(self.shape)
            dst[...] = arr[y:y + rows, x:x + cols]
            del arr
            m.madvise(mmap.MADV_DONTNEED)
        else:
            buf = np.empty((rows, w), dtype=disk)
            first = offset + y * w * disk.itemsize  # byte offset of the window's first row
            _read_into(self._handle(i), memoryview(buf.reshape(-1)).cast("B"), first, self.files[i])
            dst[...] = buf[:, x:x + cols]

    def _map(self, i: int) -> mmap.mmap:
        with self._handle(i) as f:  # the map keeps its own descriptor
            try:
                m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            except (OSError, ValueError) as e:
                raise BadInput(f"cannot map ({e})", path=self.files[i]) from None
        self._handles.pop(i, None)
        offset, disk = self._raw[i]  # type: ignore[misc]
        if len(m) < offset + self.shape[0] * self.shape[1] * disk.itemsize:
            m.close()
            raise BadInput(f"file ends early: {self.shape[0]}x{self.shape[1]} {disk} pixels at offset {offset} "
                           "expected", path=self.files[i])
        return m

    def close(self) -> None:
        """Close the files and drop maps and decoded pages; later reads re-open them."""
        self._arrays.clear()
        for m in self._maps.values():
            m.close()
        self._maps.clear()
        for f in self._handles.values():
            f.close()
        self._handles.clear()


def _read_into(f: BinaryIO, bufs: memoryview | list[memoryview], offset: int, path: Path) -> None:
    """Positioned read of exactly len(bufs) bytes at `offset` (no shared file position: safe after fork)."""
    bufs = [bufs] if isinstance(bufs, memoryview) else bufs
    want = sum(b.nbytes for b in bufs)
    got = 0
    if hasattr(os, "preadv"):
        fd = f.fileno()
        while bufs:
            n = os.preadv(fd, bufs, offset + got)
            if n <= 0:
                break
            got += n
            while bufs and n >= bufs[0].nbytes:  # drop filled buffers, trim a partly filled one
                n -= bufs[0].nbytes
                bufs = bufs[1:]
            if bufs and n:
                bufs[0] = bufs[0][n:]
    else:  # pragma: no cover - Windows
        f.seek(offset)
        for b in bufs:
            n = f.readinto(b) or 0
            got += n
            if n < b.nbytes:
                break
    if got != want:
        raise BadInput(f"file ends early: wanted {want} bytes at offset {offset}, got {got}", path=path)


def read_png_mask(path: str | Path, shape: tuple[int, int] | None = None) -> np.ndarray:
    """A mask/label PNG as an HxW bool array (any nonzero colour = True; alpha is ignored).

    `shape` (H, W): the size it must have, else BadInput naming the file and both sizes."""
    import cv2

    p = Path(path)
    if not p.is_file():
        raise BadInput("file not found", path=p)
    img = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise BadInput("not a readable image", path=p)
    if img.ndim == 3:
        img = img[..., :3] if img.shape[2] >= 3 else img[..., :1]
        mask = (img != 0).any(axis=2)
    else:
        mask = img != 0
    if shape is not None and tuple(mask.shape) != tuple(shape):
        raise BadInput(f"is {mask.shape[0]}x{mask.shape[1]} (HxW); the layers are {shape[0]}x{shape[1]}", path=p)
    return mask

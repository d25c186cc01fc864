"""TIFF layer stacks (Vesuvius `surface_volume/00.tif … 64.tif`) read window by window, never whole into RAM.

A real fragment is 65 layers of up to 8181 x 6330 uint16 (~6.7 GB); training reads 224 px patches from a few
consecutive layers. Each layer is memory-mapped (`tifffile.memmap`) when its pixels are stored uncompressed and
contiguously, as the competition's files are; otherwise the page is decoded once on first use and cached.
Validation at construction reads only TIFF headers.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kcomp.errors import BadInput, BadUsage

LAYER_NAME = re.compile(r"^(\d+)\.tiff?$", re.IGNORECASE)
DTYPES = (np.dtype(np.uint16), np.dtype(np.uint8))


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


def _header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            return tuple(page.shape), np.dtype(page.dtype)
    except (tifffile.TiffFileError, ValueError, IndexError, OSError, struct.error) as e:
        raise BadInput(f"not a readable TIFF ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})",
                       path=path) from None


class LayerStack:
    """`surface_volume/00.tif … NN.tif` of one fragment, read as windows `(layers, y, x)`.

    Layers are memory-mapped when uncompressed and contiguous (else decoded once, lazily, and cached), so a
    65 x 8181 x 6330 uint16 stack is never in RAM twice. Pickles without its maps (DataLoader workers re-open).
    """

    def __init__(self, directory: Path, *, expected: tuple[int, int] | None = None) -> None:
        self.directory = Path(directory)
        self.files = layer_files(self.directory)
        shape0, dtype0 = _header(self.files[0])
        if len(shape0) != 2:
            raise BadInput(f"layer has shape {shape0}; expected one 2-D greyscale image", path=self.files[0])
        if dtype0 not in DTYPES:
            raise BadInput(f"layer has dtype {dtype0}; expected uint16 or uint8", path=self.files[0])
        if expected is not None and tuple(expected) != shape0:
            raise BadInput(f"layer is {shape0[0]}x{shape0[1]} (HxW); expected {expected[0]}x{expected[1]}",
                           path=self.files[0])
        for f in self.files[1:]:
            shape, dtype = _header(f)
            if shape != shape0:
                what = "x".join(map(str, shape))
                raise BadInput(f"layer is {what} (HxW); {self.files[0].name} is {shape0[0]}x{shape0[1]}", path=f)
            if dtype != dtype0:
                raise BadInput(f"layer has dtype {dtype}; {self.files[0].name} has {dtype0}", path=f)
        self.n_layers: int = len(self.files)
        self.shape: tuple[int, int] = (int(shape0[0]), int(shape0[1]))
        self.dtype: np.dtype = dtype0
        self._arrays: dict[int, np.ndarray] = {}

    def __repr__(self) -> str:
        return f"LayerStack({str(self.directory)!r}, n_layers={self.n_layers}, shape={self.shape}, dtype={self.dtype})"

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_arrays": {}}

    def layer(self, i: int) -> np.ndarray:
        """Layer `i` as an HxW array: a read-only memory map when possible, else the decoded page (cached)."""
        if not 0 <= i < self.n_layers:
            raise BadUsage(f"layer {i} out of range 0..{self.n_layers - 1} of {self.directory}")
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
            out[k, cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0] = self.layer(int(i))[cy0:cy1, cx0:cx1]
        return out

    def close(self) -> None:
        """Drop the maps (and decoded pages); later reads re-open them."""
        self._arrays.clear()


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

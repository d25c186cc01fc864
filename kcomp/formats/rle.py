"""Kaggle run-length encoding of binary masks: `start length` pairs, 1-indexed, space separated, "" for no mask.

Pixels are numbered row-major (`order="row"`, Vesuvius) or column-major (`order="column"`, Understanding Clouds:
top to bottom, then left to right). Every step is one pass of a numba kernel over the mask's own memory, with no
transpose: a run boundary is a pixel that differs from its predecessor, the pixel before it in row order or the
pixel above it in column order (so a column-order scan reads the row-major array row after row and only sorts the
few boundaries it finds by column). The scan compares 8 pixels per uint64 word and skips blocks of words without a
boundary, the usual case. Numbers are printed and parsed byte by byte, and decoding validates the runs while it
writes them: into memory where each run is contiguous, as the notebook decoder does (a column-order mask comes back
as the transpose of a C-contiguous (width, height) array), or, on request, transposing as it writes.
`decode_resized` samples a mask at another size (cv2's INTER_NEAREST_EXACT) from the runs, without the full-size
array. benchmarks/bench_rle.py measures all of it against the kernels every Kaggle notebook copies; decoding a large
mask costs little more than allocating the output (the benchmark prints that floor next to each decode figure).
"""

from __future__ import annotations

import functools
import operator
import re
from types import SimpleNamespace

import numpy as np

from kcomp.errors import BadInput, BadUsage

__all__ = ["ORDERS", "check", "decode", "decode_resized", "encode"]

ORDERS = ("row", "column")

# Words of 8 pixels checked together for "no boundary here" before single words are looked at.
_BLOCK = 64
_PLAIN_INT = re.compile(r"-?[0-9]+")
# Decoded images larger than this come from fresh, OS-zeroed memory (glibc maps anything above 32 MiB anew).
_ZEROED_FROM = 1 << 25


# ---------------------------------------------------------------------------------------------------------- encode


def encode(mask: np.ndarray, order: str = "row") -> str:
    """RLE of a 2-D mask in which any nonzero pixel is foreground; "" when nothing is set."""
    _check_order(order)
    m = np.asarray(mask)
    if m.ndim != 2:
        raise BadInput(f"mask must be 2-D (height, width), got shape {m.shape}")
    if m.size == 0:
        return ""
    # Column order of m is row order of m.T: pick the scan that reads memory contiguously.
    if m.flags.f_contiguous and not m.flags.c_contiguous:
        m, order = m.T, ("column" if order == "row" else "row")
    if m.dtype.itemsize != 1 or m.dtype.kind not in "biu":
        m = m != 0
    m = np.ascontiguousarray(m).view(np.uint8)
    h, w = m.shape
    k = _kernels()
    flat = m.reshape(-1)
    lag = 1 if order == "row" else w
    # Word t of `cur` holds pixels 8(a+t)..8(a+t)+7, word t of `pred` their predecessors, pixels 8(a+t)-lag..:
    # two uint64 views of the same memory, `pred` (and `cur` for a mask that starts mid-word) unaligned, which
    # x86 and ARM load at full speed.
    a, nw = (lag + 7) // 8, flat.size // 8
    if nw > a:
        cur = flat[:8 * nw].view(np.uint64)[a:]
        pred = np.ndarray((nw - a,), np.uint64, flat, 8 * a - lag)
    else:
        cur = pred = np.zeros(0, np.uint64)
    edges = np.empty(flat.size // 64 + 64, np.int64)
    count = k.scan(flat, cur, pred, lag, h, w, _BLOCK, edges)
    if count > edges.size:  # a noisy mask: more boundaries than the first guess had room for
        edges = np.empty(count, np.int64)
        k.scan(flat, cur, pred, lag, h, w, _BLOCK, edges)
    if count == 0:
        return ""
    edges = edges[:count]
    if order == "column":
        edges = k.column_major(edges, h, w)
    return str(k.format(edges), "ascii")


# ---------------------------------------------------------------------------------------------------------- decode


def decode(rle: str, shape: tuple[int, int], order: str = "row", *, where: str = "",
           c_contiguous: bool = False) -> np.ndarray:
    """uint8 (height, width) array of 0/1; `where` (e.g. "train.csv row 7") prefixes errors.

    Laid out as the notebook kernel lays it out, so that runs are contiguous in memory: C-contiguous for row order,
    and for column order the transpose of a C-contiguous (width, height) array, i.e. F-contiguous. Pass
    `c_contiguous=True` for a C-contiguous array in column order too (cv2 wants one): a fill that transposes as it
    goes, close to the F fill's time and far cheaper than np.ascontiguousarray (or cv2) copying an F array
    (the `c_contiguous=True` lines of the rle sections in benchmarks/RESULTS.md)."""
    _check_order(order)
    at = f"{where}: " if where else ""
    h, w = _shape(shape, at, "mask shape")
    if not isinstance(rle, str):
        raise BadInput(f"{at}RLE must be a string, got {type(rle).__name__} {rle!r}")
    transposed = order == "column" and not c_contiguous  # fill the (w, h) array whose rows are the columns
    if not rle:
        return np.zeros((w, h), np.uint8).T if transposed else np.zeros((h, w), np.uint8)
    k = _kernels()
    if order == "row" or transposed:
        # Small arrays reuse freed memory, which np.zeros would clear first: writing gaps too is one pass, not two.
        # Large ones get fresh pages, zeroed by the OS anyway (and only where touched): write just the runs.
        zeroed = h * w > _ZEROED_FROM
        out = (np.zeros if zeroed else np.empty)((w, h) if transposed else (h, w), np.uint8)
        # The text is parsed as the runs are written (the parse hides behind the stores) unless it holds something
        # only _parse reads (status 1): then parsed first, into a fresh array.
        status = k.fill_text(buf, out.reshape(-1), zeroed) if (buf := _ascii(rle)) is not None else 1
        if status == 1:
            values = _parse(rle, at)
            out = (np.zeros if zeroed else np.empty)(out.shape, np.uint8)
            status = 0 if values.size % 2 == 0 and k.fill_rows(values, out.reshape(-1), zeroed) else 2
        ok = status == 0
    else:
        values = _parse(rle, at)
        out = np.empty((h, w), np.uint8)
        ok = values.size % 2 == 0 and k.fill_columns(values, out)
    if not ok:
        _runs(_parse(rle, at), h * w, h, w, at)  # the kernels only say that there is a fault: name it
        raise AssertionError(f"RLE kernel refused runs that _runs accepts: {rle[:200]!r}")
    return out.T if transposed else out


def decode_resized(rle: str, shape: tuple[int, int], size: tuple[int, int], order: str = "row", *,
                   where: str = "") -> np.ndarray:
    """The C-contiguous uint8 (out_h, out_w) = `size` array `cv2.resize(decode(rle, shape, order), (out_w, out_h),
    interpolation=cv2.INTER_NEAREST_EXACT)` of opencv 5 (nearest pixel centre, Pillow's arithmetic: see
    _rle_kernels._nearest), without the full-size array: O(runs + height + width + output pixels) instead of
    O(image). Validates as `decode` does."""
    _check_order(order)
    at = f"{where}: " if where else ""
    h, w = _shape(shape, at, "mask shape")
    oh, ow = _shape(size, at, "output size")
    if not isinstance(rle, str):
        raise BadInput(f"{at}RLE must be a string, got {type(rle).__name__} {rle!r}")
    values = _parse(rle, at) if rle else np.zeros(0, np.int64)
    out = np.empty((oh, ow), np.uint8)
    if values.size == 0 or h * w == 0 or oh * ow == 0:
        _runs(values, h * w, h, w, at)
        out.fill(0)
        return out
    k = _kernels()
    ys, xs = k.nearest(h, oh), k.nearest(w, ow)
    if not (values.size % 2 == 0 and k.runs_fit(values, h * w)):
        _runs(values, h * w, h, w, at)
        raise AssertionError(f"RLE kernel refused runs that _runs accepts: {rle[:200]!r}")
    if order == "row":
        k.sample_rows(values, w, ys, xs, out)
    else:
        k.sample_columns(values, h, ys, xs, out)
    return out


def check(rle: str, shape: tuple[int, int], *, where: str = "") -> int:
    """Validate an RLE for a `shape` image without decoding it (a parse, not a full-size fill): the number of
    runs, or BadInput naming the first fault exactly as `decode` would. `prep` runs this on every mask."""
    at = f"{where}: " if where else ""
    if not isinstance(rle, str):
        raise BadInput(f"{at}RLE must be a string, got {type(rle).__name__} {rle!r}")
    values = _parse(rle, at) if rle.strip() else np.zeros(0, np.int64)
    h, w = int(shape[0]), int(shape[1])
    _runs(values, h * w, h, w, at)
    return values.size // 2


def _check_order(order: str) -> None:
    if order not in ORDERS:
        raise BadUsage(f"RLE order {order!r}: choose one of {', '.join(ORDERS)}")


def _shape(shape: tuple[int, int], at: str, what: str) -> tuple[int, int]:
    try:
        h, w = (operator.index(s) for s in shape)
    except (TypeError, ValueError):
        raise BadInput(f"{at}{what} must be (height, width), got {shape!r}") from None
    if h < 0 or w < 0:
        raise BadInput(f"{at}{what} must be non-negative, got {shape!r}")
    return h, w


def _ascii(rle: str) -> np.ndarray | None:
    try:
        return np.frombuffer(rle.encode("ascii"), np.uint8)
    except UnicodeEncodeError:
        return None


def _parse(rle: str, at: str) -> np.ndarray:
    """All integers of the string as int64, read straight from its ASCII bytes by a kernel."""
    buf = _ascii(rle)
    if buf is None:
        return _parse_slow(rle, at)
    values, count, ok = _kernels().parse(buf)
    return values[:count] if ok else _parse_slow(rle, at)


def _parse_slow(rle: str, at: str) -> np.ndarray:
    """Token by token, for strings the kernel refuses: either parses them or names the first bad token."""
    tokens = rle.split()
    for k, tok in enumerate(tokens):
        what = f"{'start' if k % 2 == 0 else 'length'} {tok!r} (pair {k // 2 + 1})"
        if not (tok.isascii() and _PLAIN_INT.fullmatch(tok)):
            raise BadInput(f"{at}RLE {what} is not an integer")
        if tok.startswith("-") and int(tok) < 1:
            raise BadInput(f"{at}RLE {what} is < 1")
        if len(tok.lstrip("0")) > 16:
            raise BadInput(f"{at}RLE {what} is larger than any image")
    return np.array([int(t) for t in tokens], dtype=np.int64)


def _runs(values: np.ndarray, n: int, h: int, w: int, at: str) -> None:
    """Raise BadInput naming the first fault unless the pairs are sorted, disjoint runs inside the image."""
    if values.size % 2:
        raise BadInput(f"{at}RLE has an odd number of values ({values.size}): expected `start length` pairs")
    starts, lengths = values[0::2], values[1::2]

    def first(bad: np.ndarray) -> int:
        return int(np.flatnonzero(bad)[0])

    if (starts < 1).any():
        k = first(starts < 1)
        raise BadInput(f"{at}RLE start {starts[k]} (pair {k + 1}) is < 1: starts are 1-indexed")
    if (lengths < 1).any():
        k = first(lengths < 1)
        raise BadInput(f"{at}RLE length {lengths[k]} (pair {k + 1}) is < 1")
    ends = starts - 1 + lengths
    if (ends > n).any():
        k = first(ends > n)
        raise BadInput(f"{at}RLE run {starts[k]} {lengths[k]} (pair {k + 1}) runs past the end of the {h}x{w} "
                       f"image ({n} pixels)")
    if (starts[1:] - 1 < ends[:-1]).any():
        k = first(starts[1:] - 1 < ends[:-1])
        raise BadInput(f"{at}RLE run {starts[k + 1]} {lengths[k + 1]} (pair {k + 2}) overlaps or comes before run "
                       f"{starts[k]} {lengths[k]} (pair {k + 1}): runs must be sorted and disjoint")


@functools.cache
def _kernels() -> SimpleNamespace:
    """The numba kernels of kcomp.formats._rle_kernels, imported on first use: importing numba is slow next to a
    `kcomp --help` start-up (benchmarks/RESULTS.md, start-up), which importers of this module should not pay before
    they encode or decode anything."""
    from kcomp.formats._rle_kernels import kernels

    return kernels()

"""Kaggle run-length encoding of binary masks: `start length` pairs, 1-indexed, space separated, "" for no mask.

Pixels are numbered row-major (`order="row"`, Vesuvius) or column-major (`order="column"`, Understanding Clouds:
top to bottom, then left to right). Every step is one pass of a numba kernel over the mask's own memory, with no
transpose: a run boundary is a pixel that differs from its predecessor, the pixel before it in row order or the
pixel above it in column order (so a column-order scan reads the row-major array row after row and only sorts the
few boundaries it finds by column). The scan compares 8 pixels per uint64 word and skips blocks of words without a
boundary, the usual case. Numbers are printed and parsed byte by byte, and decoding validates the runs while it
writes them. benchmarks/bench_rle.py measures all of it against the kernels every Kaggle notebook copies.
"""

from __future__ import annotations

import functools
import operator
import re
import sys
from types import SimpleNamespace

import numpy as np

from kcomp.errors import BadInput, BadUsage

__all__ = ["ORDERS", "check", "decode", "encode"]

ORDERS = ("row", "column")

# Words of 8 pixels checked together for "no boundary here" before single words are looked at.
_BLOCK = 64
_PLAIN_INT = re.compile(r"-?[0-9]+")
# Decoded images larger than this come from fresh, OS-zeroed memory (glibc maps anything above 32 MiB anew).
_ZEROED_FROM = 1 << 25
# Tables for the kernels (numba compiles module-level arrays in as constants): the lowest set bit of a byte,
# 10**k, and the two ASCII digits of 0..99.
_LOWBIT = np.array([0] + [(i & -i).bit_length() - 1 for i in range(1, 256)], np.int64)
_POW10 = np.array([10**k for k in range(20)], np.uint64)
_PAIRS = np.frombuffer("".join(f"{i:02d}" for i in range(100)).encode(), np.uint8).copy()


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


def _scan(f: np.ndarray, cur: np.ndarray, pred: np.ndarray, lag: int, h: int, w: int, block: int,
          out: np.ndarray) -> int:  # pragma: no cover - numba, see _kernels
    """Flat row-major positions p, ascending, where pixel p is set and its predecessor is not or the other way round
    (plus h*w when the last pixel is set); stores the first out.size of them and returns how many there are.

    The predecessor of p is p-lag: lag 1 gives row order, lag w the pixel above, i.e. column order, where a pixel of
    the top row follows the bottom pixel of the previous column. Before pixel 0 there is a 0. Pixels from 8a on
    (a = ceil(lag / 8)) come as 8-pixel words `cur`, their predecessors as words `pred` (see encode): blocks of
    words equal to their predecessors are skipped, and only words that differ are split into pixels. Word loops
    count with unsigned ints: numba's wraparound of negative indices would turn the loads into gathers."""
    n = f.size
    cap = out.size
    k = 0
    a = (lag + 7) // 8
    head = min(8 * a, n)
    for p in range(head):
        if p >= lag:
            prev = f[p - lag] != 0
        elif p > 0:
            prev = f[(h - 1) * w + p - 1] != 0
        else:
            prev = False
        if (f[p] != 0) != prev:
            if k < cap:
                out[k] = p
            k += 1
    zero, nt, step = np.uint64(0), np.uint64(cur.size), np.uint64(block)
    ones, gather = np.uint64(0x0101010101010101), np.uint64(0x0102040810204080)
    s1, s2, s4, s56 = np.uint64(1), np.uint64(2), np.uint64(4), np.uint64(56)
    t0 = zero
    while t0 < nt:
        t1 = min(t0 + step, nt)
        acc = zero
        for t in range(t0, t1):
            acc |= cur[t] ^ pred[t]
        if acc != zero:
            for t in range(t0, t1):
                x = cur[t]
                y = pred[t]
                if x == y:
                    continue
                # Bit i of bx / by = byte i of x / y is nonzero (OR-fold each byte into its low bit, then gather).
                x |= x >> s4
                x |= x >> s2
                x |= x >> s1
                y |= y >> s4
                y |= y >> s2
                y |= y >> s1
                d = np.int64((((x & ones) * gather) >> s56) ^ (((y & ones) * gather) >> s56))
                p = 8 * (np.int64(t) + a)
                while d:  # one boundary per set bit, lowest first
                    if k < cap:
                        out[k] = p + _LOWBIT[d]
                    k += 1
                    d &= d - 1
        t0 = t1
    for p in range(max(8 * (a + cur.size), head), n):
        if (f[p] != 0) != (f[p - lag] != 0):
            if k < cap:
                out[k] = p
            k += 1
    if f[n - 1] != 0:
        if k < cap:
            out[k] = n
        k += 1
    return k


def _column_major(ps: np.ndarray, h: int, w: int) -> np.ndarray:  # pragma: no cover - numba, see _kernels
    """Row-major boundary positions (ascending) renumbered column-major and sorted: a counting sort by column keeps
    each column's rows in the ascending order the scan found them. The end marker h*w stays last. Rows are
    counted up along the ascending positions instead of divided out (a division costs ~40 cycles)."""
    n = h * w
    m = ps.size
    end = m > 0 and ps[m - 1] == n
    if end:
        m -= 1
    rows = np.empty(m, np.int64)
    start = np.zeros(w + 1, np.int64)
    i = 0
    row0 = 0  # i * w
    for t in range(m):
        while ps[t] >= row0 + w:
            i += 1
            row0 += w
        rows[t] = i
        start[ps[t] - row0 + 1] += 1
    for j in range(w):
        start[j + 1] += start[j]
    out = np.empty(ps.size, np.int64)
    for t in range(m):
        j = ps[t] - rows[t] * w
        out[start[j]] = j * h + rows[t]
        start[j] += 1
    if end:
        out[m] = n
    return out


def _format(edges: np.ndarray) -> np.ndarray:  # pragma: no cover - numba, see _kernels
    """ASCII bytes of "start length ..." for boundaries e0 e1 e2 e3 ...: start e0+1, length e1-e0, ...
    Unsigned arithmetic and two digits per division keep this at a few ns per number."""
    m = edges.size
    total = m - 1  # the spaces
    for i in range(m):
        v = np.uint64(edges[i] + 1 if i % 2 == 0 else edges[i] - edges[i - 1])
        nd = 1
        while nd < 20 and v >= _POW10[nd]:
            nd += 1
        total += nd
    buf = np.empty(total, np.uint8)
    hundred, ten = np.uint64(100), np.uint64(10)
    pos = 0
    for i in range(m):
        v = np.uint64(edges[i] + 1 if i % 2 == 0 else edges[i] - edges[i - 1])
        nd = 1
        while nd < 20 and v >= _POW10[nd]:
            nd += 1
        q = pos + nd
        while v >= hundred:
            r = v % hundred
            v //= hundred
            q -= 2
            buf[q], buf[q + 1] = _PAIRS[2 * r], _PAIRS[2 * r + 1]
        if v >= ten:
            buf[q - 2], buf[q - 1] = _PAIRS[2 * v], _PAIRS[2 * v + 1]
        else:
            buf[q - 1] = 48 + v
        pos += nd
        if pos < total:
            buf[pos] = 32
            pos += 1
    return buf


# ---------------------------------------------------------------------------------------------------------- decode


def decode(rle: str, shape: tuple[int, int], order: str = "row", *, where: str = "") -> np.ndarray:
    """uint8 (height, width) array of 0/1, C-contiguous; `where` (e.g. "train.csv row 7") prefixes errors."""
    _check_order(order)
    at = f"{where}: " if where else ""
    try:
        h, w = (operator.index(s) for s in shape)
    except (TypeError, ValueError):
        raise BadInput(f"{at}mask shape must be (height, width), got {shape!r}") from None
    if h < 0 or w < 0:
        raise BadInput(f"{at}mask shape must be non-negative, got {shape!r}")
    if not isinstance(rle, str):
        raise BadInput(f"{at}RLE must be a string, got {type(rle).__name__} {rle!r}")
    values = _parse(rle, at) if rle else np.zeros(0, np.int64)
    if values.size == 0:
        return np.zeros((h, w), np.uint8)
    k = _kernels()
    if order == "row":
        # Small arrays reuse freed memory, which np.zeros would clear first: writing gaps too is one pass, not two.
        # Large ones get fresh pages, zeroed by the OS anyway (and only where touched): write just the runs.
        zeroed = h * w > _ZEROED_FROM
        out = np.zeros((h, w), np.uint8) if zeroed else np.empty((h, w), np.uint8)
        ok = values.size % 2 == 0 and k.fill_rows(values, out.reshape(-1), zeroed)
    else:
        out = np.empty((h, w), np.uint8)
        ok = values.size % 2 == 0 and k.fill_columns(values, out)
    if not ok:
        _runs(values, h * w, h, w, at)  # names the first fault, the same one the kernel stopped at
        raise AssertionError(f"RLE kernel refused runs that _runs accepts: {rle[:200]!r}")
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


def _parse(rle: str, at: str) -> np.ndarray:
    """All integers of the string as int64, read straight from its ASCII bytes by a kernel."""
    try:
        raw = rle.encode("ascii")
    except UnicodeEncodeError:
        return _parse_slow(rle, at)
    values, count, ok = _kernels().parse(np.frombuffer(raw, np.uint8))
    return values[:count] if ok else _parse_slow(rle, at)


def _parse_bytes(buf: np.ndarray) -> tuple[np.ndarray, int, bool]:  # pragma: no cover - numba, see _kernels
    """(values, count, ok) for a string of decimal digits and ASCII spaces, tabs and newlines; ok is False for
    anything else (another character, a sign, more than 16 significant digits), which _parse_slow then handles."""
    n = buf.size
    values = np.empty(n // 2 + 1, np.int64)
    k = 0
    i = 0
    while i < n:
        c = np.int64(buf[i])
        if c - 48 < 0 or c - 48 > 9:
            if c != 32 and (c < 9 or c > 13):
                return values, k, False
            i += 1
            continue
        first = i
        v = 0
        while i < n and 0 <= np.int64(buf[i]) - 48 <= 9:
            v = v * 10 + (np.int64(buf[i]) - 48)
            i += 1
        if i - first > 16:  # int64 may have wrapped: only leading zeros make this a number an image can hold
            while first < i and buf[first] == 48:
                first += 1
            if i - first > 16:
                return values, k, False
        values[k] = v
        k += 1
    return values, k, True


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


def _fill_rows(values: np.ndarray, out: np.ndarray, zeroed: bool) -> bool:  # pragma: no cover - numba, see _kernels
    """Write the runs of `start length` pairs into a flat array, and the gaps between them unless it is `zeroed`
    already; False at the first run that is out of range, empty, or not after the previous one (the caller then
    discards `out`). Loops over unsigned ranges compile to plain memsets (numba's slice assignment does not)."""
    n = out.size
    end = 0
    zero, one = np.uint8(0), np.uint8(1)
    for t in range(0, values.size, 2):
        s = values[t] - 1
        e = s + values[t + 1]
        if s < end or e <= s or e > n:
            return False
        if not zeroed:
            for p in range(np.uint64(end), np.uint64(s)):
                out[p] = zero
        for p in range(np.uint64(s), np.uint64(e)):
            out[p] = one
        end = e
    if not zeroed:
        for p in range(np.uint64(end), np.uint64(n)):
            out[p] = zero
    return True


def _fill_columns(values: np.ndarray, out: np.ndarray) -> bool:  # pragma: no cover - numba, see _kernels
    """As _fill_rows for column-major runs, written row after row into a row-major array, so without a transpose and
    without zeroing `out` first: a run sets a column where it enters it (its start, or the top of each column it
    wraps into) and clears it just below where it leaves it; these marks, bucketed by row, update one row of
    column states that is copied into `out` row by row. Columns are counted up along the sorted runs rather than
    divided out."""
    h, w = out.shape
    n = h * w
    marks = np.zeros(h + 1, np.int64)  # marks[r + 1]: how many marks row r gets
    end = 0
    c, top = 0, 0  # column of the current run's last pixel, and that column's first pixel c * h
    for t in range(0, values.size, 2):
        s = values[t] - 1
        e = s + values[t + 1]
        if s < end or e <= s or e > n:
            return False
        end = e
        while top + h <= s:
            c += 1
            top += h
        marks[s - top + 1] += 1
        while top + h < e:  # the run goes on at the top of the next column
            c += 1
            top += h
            marks[1] += 1
        if e - top < h:
            marks[e - top + 1] += 1
    for r in range(h):
        marks[r + 1] += marks[r]
    cols = np.empty(marks[h], np.int64)
    flips = np.empty(marks[h], np.uint8)  # 1 sets a column, 255 (-1 mod 256) clears it
    c, top = 0, 0
    for t in range(0, values.size, 2):
        s = values[t] - 1
        e = s + values[t + 1]
        while top + h <= s:
            c += 1
            top += h
        r = s - top
        cols[marks[r]], flips[marks[r]] = c, 1
        marks[r] += 1
        while top + h < e:
            c += 1
            top += h
            cols[marks[0]], flips[marks[0]] = c, 1
            marks[0] += 1
        r = e - top
        if r < h:  # a clear may share its pixel with the set of the next run: cleared first, so it ends up set
            cols[marks[r]], flips[marks[r]] = c, 255
            marks[r] += 1
    state = np.zeros(w, np.uint8)
    first = 0
    for r in range(h):  # after the scatter, row r's marks are [marks[r - 1], marks[r])
        for q in range(first, marks[r]):
            state[cols[q]] += flips[q]
        first = marks[r]
        row = out[r]
        for j in range(w):  # an explicit loop: numba's `out[r, :] = state` is ~10x slower
            row[j] = state[j]
    return True


# ---------------------------------------------------------------------------------------------------------- kernels


@functools.cache
def _kernels() -> SimpleNamespace:
    """The kernels above, compiled by numba on first use and cached on disk (next to this module): importing numba
    takes ~0.2 s, which importers of this module should not pay before they encode or decode anything."""
    import numba

    if sys.byteorder != "little":  # _scan reads pixel 8q+i from byte i of word q
        raise RuntimeError("kcomp.post.rle needs a little-endian machine")
    jit = numba.njit(cache=True, nogil=True)
    return SimpleNamespace(scan=jit(_scan), column_major=jit(_column_major), format=jit(_format),
                           parse=jit(_parse_bytes), fill_rows=jit(_fill_rows), fill_columns=jit(_fill_columns))

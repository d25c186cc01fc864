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
import sys
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


def decode(rle: str, shape: tuple[int, int], order: str = "row", *, where: str = "",
           c_contiguous: bool = False) -> np.ndarray:
    """uint8 (height, width) array of 0/1; `where` (e.g. "train.csv row 7") prefixes errors.

    Laid out as the notebook kernel lays it out, so that runs are contiguous in memory: C-contiguous for row order,
    and for column order the transpose of a C-contiguous (width, height) array, i.e. F-contiguous. Pass
    `c_contiguous=True` for a C-contiguous array in column order too (cv2 wants one): a fill that transposes as it
    goes, ~1.2x the time of the F fill and ~10x cheaper than np.ascontiguousarray (or cv2) copying an F array."""
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
    interpolation=cv2.INTER_NEAREST_EXACT)` of opencv 5 (nearest pixel centre, Pillow's arithmetic: see _nearest),
    without the full-size array: O(runs + height + width + output pixels) instead of O(image). Validates as
    `decode` does."""
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


def _fill_text(buf: np.ndarray, out: np.ndarray, zeroed: bool) -> int:  # pragma: no cover - numba, see _kernels
    """_fill_rows reading the `start length` pairs straight from the ASCII bytes of the RLE, as _parse_bytes reads
    them: 0 when done, 1 at text _parse_bytes refuses (the caller parses it with _parse and starts again), 2 at bad
    runs or an odd count of numbers (the caller names the fault)."""
    n, nb = out.size, buf.size
    zero, one = np.uint8(0), np.uint8(1)
    i = 0
    end = 0  # the end of the last run written
    start = -1  # a start read, waiting for its length
    while True:
        while i < nb and (buf[i] == 32 or 9 <= buf[i] <= 13):
            i += 1
        if i == nb:
            break
        first = i
        v = 0
        while i < nb and 48 <= buf[i] <= 57:
            v = v * 10 + (np.int64(buf[i]) - 48)
            i += 1
        if i == first:  # neither a digit nor a separator
            return 1
        if i - first > 16:  # as in _parse_bytes: only leading zeros make this a number an image can hold
            while first < i and buf[first] == 48:
                first += 1
            if i - first > 16:
                return 1
        if start < 0:
            start = v - 1
            if start < 0:
                return 2
            continue
        s, e = start, start + v
        start = -1
        if s < end or e <= s or e > n:
            return 2
        if not zeroed:
            for p in range(np.uint64(end), np.uint64(s)):
                out[p] = zero
        for p in range(np.uint64(s), np.uint64(e)):
            out[p] = one
        end = e
    if start >= 0:
        return 2
    if not zeroed:
        for p in range(np.uint64(end), np.uint64(n)):
            out[p] = zero
    return 0


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


def _nearest(n: int, m: int) -> np.ndarray:  # pragma: no cover - numba, see _kernels
    """firsts[i], i = 0..n: how many of m output pixels sample a source pixel < i, so the ones sampling pixels
    [a, b) are firsts[a]:firsts[b]. Output pixel j samples floor(f_j) (at most n - 1), f_0 = scale / 2 and
    f_j+1 = f_j + scale in IEEE doubles, scale = n / m: Pillow's NEAREST, which cv2 5's INTER_NEAREST_EXACT copies
    to the bit (cv2 4 used a 16-bit fixed-point scale, which differs from it where a pixel centre falls exactly on
    a source pixel edge)."""
    firsts = np.zeros(n + 1, np.int64)
    scale = n / m
    f = scale * 0.5
    for _ in range(m):
        firsts[min(int(np.floor(f)), n - 1) + 1] += 1
        f += scale
    for i in range(n):
        firsts[i + 1] += firsts[i]
    return firsts


def _runs_fit(values: np.ndarray, n: int) -> bool:  # pragma: no cover - numba, see _kernels
    """Are the (start, length) pairs sorted, disjoint, non-empty and inside n pixels? The samplers below look at
    only some runs, so they rely on this check made first."""
    end = 0
    for t in range(values.size // 2):
        s = values[2 * t] - 1
        e = s + values[2 * t + 1]
        if s < end or e <= s or e > n:
            return False
        end = e
    return True


def _sample_rows(values: np.ndarray, w: int, ys: np.ndarray, xs: np.ndarray,
                 out: np.ndarray) -> None:  # pragma: no cover - numba, see _kernels
    """decode_resized for row-major runs: each sampled source row r is cut out of the runs that cross it, its runs
    become ranges of output columns (xs, see _nearest), and the output row is written as alternating 0/1 ranges,
    then copied to the other output rows sampling r. Runs in rows nobody samples are stepped over, so the runs
    must have passed _runs_fit."""
    h = ys.size - 1
    m = values.size // 2
    ow = out.shape[1]
    zero, one = np.uint8(0), np.uint8(1)
    t = 0  # the first run that ends after the start of row r
    for r in range(h):
        y0, y1 = ys[r], ys[r + 1]
        if y0 == y1:
            continue
        lo = r * w
        while t < m and values[2 * t] - 1 + values[2 * t + 1] <= lo:
            t += 1
        row = out[y0]
        x = 0
        u = t
        while u < m and values[2 * u] - 1 < lo + w:
            s = values[2 * u] - 1
            x0 = xs[max(s, lo) - lo]
            x1 = xs[min(s + values[2 * u + 1], lo + w) - lo]
            for p in range(np.uint64(x), np.uint64(x0)):
                row[p] = zero
            for p in range(np.uint64(x0), np.uint64(x1)):
                row[p] = one
            x = x1
            u += 1
        for p in range(np.uint64(x), np.uint64(ow)):
            row[p] = zero
        for y in range(y0 + 1, y1):
            dst = out[y]
            for p in range(np.uint64(ow)):
                dst[p] = row[p]


def _sample_columns(values: np.ndarray, h: int, ys: np.ndarray, xs: np.ndarray,
                    out: np.ndarray) -> None:  # pragma: no cover - numba, see _kernels
    """decode_resized for column-major runs, written row by row into the C-contiguous output as _fill_columns does
    at full size: a run's part in a sampled source column c covers output rows ys[r0]:ys[r1], so it sets output
    columns xs[c]:xs[c + 1] at the first of those rows and clears them at the row after the last; these marks,
    bucketed by output row, update one row of column states copied into `out` row after row. Marks add 1 or 255
    (mod 256), so the order of the marks within a row does not matter."""
    w = xs.size - 1
    m = values.size // 2
    oh, ow = out.shape
    start = np.zeros(oh + 1, np.int64)
    cols, flips = np.empty(0, np.int64), np.empty(0, np.uint8)
    for rep in range(2):  # count the marks of each output row, then place them
        if rep == 1:
            for y in range(oh):
                start[y + 1] += start[y]
            cols, flips = np.empty(start[oh], np.int64), np.empty(start[oh], np.uint8)
        c, top = 0, 0  # a column of the current run and its first pixel c * h
        for t in range(m):
            s = values[2 * t] - 1
            e = s + values[2 * t + 1]
            while top + h <= s:
                c += 1
                top += h
            while True:
                if xs[c] < xs[c + 1]:
                    y0, y1 = ys[max(s - top, 0)], ys[min(e - top, h)]
                    if y0 < y1:
                        if rep == 0:
                            start[y0 + 1] += 1
                            if y1 < oh:
                                start[y1 + 1] += 1
                        else:
                            cols[start[y0]], flips[start[y0]] = c, 1
                            start[y0] += 1
                            if y1 < oh:
                                cols[start[y1]], flips[start[y1]] = c, 255
                                start[y1] += 1
                if top + h >= e:
                    break
                c += 1
                top += h
    state = np.zeros(ow, np.uint8)
    first = 0
    for y in range(oh):  # after the placing pass, row y's marks are [start[y - 1], start[y])
        for q in range(first, start[y]):
            for x in range(xs[cols[q]], xs[cols[q] + 1]):
                state[x] += flips[q]
        first = start[y]
        row = out[y]
        for x in range(np.uint64(ow)):
            row[x] = state[x]


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
                           parse=jit(_parse_bytes), fill_rows=jit(_fill_rows), fill_columns=jit(_fill_columns),
                           fill_text=jit(_fill_text),
                           nearest=jit(_nearest), runs_fit=jit(_runs_fit), sample_rows=jit(_sample_rows),
                           sample_columns=jit(_sample_columns))

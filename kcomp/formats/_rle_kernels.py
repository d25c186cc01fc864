"""The numba kernels of kcomp.formats.rle, compiled on first call and cached on disk (next to this module).

Kept apart from rle.py, which holds the public API and its validation: rle.py imports this module (and with it numba,
slow to import next to `kcomp --help`) only when it first encodes or decodes, calls the kernels through `kernels()` and
names any fault they report.
"""

from __future__ import annotations

import sys
from types import SimpleNamespace

import numba
import numpy as np

# Tables for the kernels (numba compiles module-level arrays in as constants): the lowest set bit of a byte,
# 10**k, and the two ASCII digits of 0..99.
_LOWBIT = np.array([0] + [(i & -i).bit_length() - 1 for i in range(1, 256)], np.int64)
_POW10 = np.array([10**k for k in range(20)], np.uint64)
_PAIRS = np.frombuffer("".join(f"{i:02d}" for i in range(100)).encode(), np.uint8).copy()
_jit = numba.njit(cache=True, nogil=True)  # each kernel compiles on its first call, then loads from __pycache__


# ---------------------------------------------------------------------------------------------------------- encode


@_jit
def _scan(f: np.ndarray, cur: np.ndarray, pred: np.ndarray, lag: int, h: int, w: int, block: int,
          out: np.ndarray) -> int:  # pragma: no cover - numba
    """Flat row-major positions p, ascending, where pixel p is set and its predecessor is not or the other way round
    (plus h*w when the last pixel is set); stores the first out.size of them and returns how many there are.

    The predecessor of p is p-lag: lag 1 gives row order, lag w the pixel above, i.e. column order, where a pixel of
    the top row follows the bottom pixel of the previous column. Before pixel 0 there is a 0. Pixels from 8a on
    (a = ceil(lag / 8)) come as 8-pixel words `cur`, their predecessors as words `pred` (see rle.encode): blocks of
    words equal to their predecessors are skipped, and only words that differ are split into pixels. The three
    stretches (head pixels, words, tail pixels) are one loop each, called once per mask."""
    n = f.size
    a = (lag + 7) // 8
    head = min(8 * a, n)
    k = _scan_head(f, lag, h, w, head, out)
    k = _scan_words(cur, pred, a, block, out, k)
    k = _scan_tail(f, lag, max(8 * (a + cur.size), head), out, k)
    if f[n - 1] != 0:
        if k < out.size:
            out[k] = n
        k += 1
    return k


@_jit
def _scan_head(f: np.ndarray, lag: int, h: int, w: int, head: int, out: np.ndarray) -> int:  # pragma: no cover
    """Boundaries among the first `head` pixels, whose predecessors wrap to the previous column (or are 0)."""
    k = 0
    cap = out.size
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
    return k


@_jit
def _scan_words(cur: np.ndarray, pred: np.ndarray, a: int, block: int, out: np.ndarray,
                k: int) -> int:  # pragma: no cover - numba
    """Boundaries in the 8-pixel words from pixel 8a on, a block of words at a time. Word loops count with unsigned
    ints: numba's wraparound of negative indices would turn the loads into gathers."""
    cap = out.size
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
    return k


@_jit
def _scan_tail(f: np.ndarray, lag: int, start: int, out: np.ndarray, k: int) -> int:  # pragma: no cover - numba
    """Boundaries among the pixels from `start` on that the words did not cover."""
    cap = out.size
    for p in range(start, f.size):
        if (f[p] != 0) != (f[p - lag] != 0):
            if k < cap:
                out[k] = p
            k += 1
    return k


@_jit
def _column_major(ps: np.ndarray, h: int, w: int) -> np.ndarray:  # pragma: no cover - numba
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


@_jit
def _format(edges: np.ndarray) -> np.ndarray:  # pragma: no cover - numba
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


@_jit
def _parse_bytes(buf: np.ndarray) -> tuple[np.ndarray, int, bool]:  # pragma: no cover - numba
    """(values, count, ok) for a string of decimal digits and ASCII spaces, tabs and newlines; ok is False for
    anything else (another character, a sign, more than 16 significant digits), which rle._parse_slow then
    handles."""
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


@numba.njit(inline="always")  # inlined into each caller at numba IR level: no call in the run loop
def _put_run(out: np.ndarray, end: int, s: int, e: int, zeroed: bool) -> None:  # pragma: no cover - numba
    """Set pixels [s, e) of the flat `out`, and clear the gap [end, s) before them unless `out` is `zeroed` already.
    Loops over unsigned ranges compile to plain memsets (numba's slice assignment does not)."""
    if not zeroed:
        for p in range(np.uint64(end), np.uint64(s)):
            out[p] = np.uint8(0)
    for p in range(np.uint64(s), np.uint64(e)):
        out[p] = np.uint8(1)


@_jit
def _fill_rows(values: np.ndarray, out: np.ndarray, zeroed: bool) -> bool:  # pragma: no cover - numba
    """Write the runs of `start length` pairs into a flat array, and the gaps between them unless it is `zeroed`
    already; False at the first run that is out of range, empty, or not after the previous one (the caller then
    discards `out`)."""
    n = out.size
    end = 0
    for t in range(0, values.size, 2):
        s = values[t] - 1
        e = s + values[t + 1]
        if s < end or e <= s or e > n:
            return False
        _put_run(out, end, s, e, zeroed)
        end = e
    _put_run(out, end, n, n, zeroed)  # the gap after the last run
    return True


@_jit
def _fill_text(buf: np.ndarray, out: np.ndarray, zeroed: bool) -> int:  # pragma: no cover - numba
    """_fill_rows reading the `start length` pairs straight from the ASCII bytes of the RLE, as _parse_bytes reads
    them: 0 when done, 1 at text _parse_bytes refuses (the caller parses it with rle._parse and starts again), 2 at
    bad runs or an odd count of numbers (the caller names the fault)."""
    n, nb = out.size, buf.size
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
        _put_run(out, end, s, e, zeroed)
        end = e
    if start >= 0:
        return 2
    _put_run(out, end, n, n, zeroed)  # the gap after the last run
    return 0


@_jit
def _fill_columns(values: np.ndarray, out: np.ndarray) -> bool:  # pragma: no cover - numba
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
        for j in range(w):  # an explicit loop: numba's `out[r, :] = state` is slower (bench_rle.py)
            row[j] = state[j]
    return True


# --------------------------------------------------------------------------------------------------- decode_resized


@_jit
def _nearest(n: int, m: int) -> np.ndarray:  # pragma: no cover - numba
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


@_jit
def _runs_fit(values: np.ndarray, n: int) -> bool:  # pragma: no cover - numba
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


@_jit
def _sample_rows(values: np.ndarray, w: int, ys: np.ndarray, xs: np.ndarray,
                 out: np.ndarray) -> None:  # pragma: no cover - numba
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


@_jit
def _sample_columns(values: np.ndarray, h: int, ys: np.ndarray, xs: np.ndarray,
                    out: np.ndarray) -> None:  # pragma: no cover - numba
    """decode_resized for column-major runs, written row by row into the C-contiguous output as _fill_columns does
    at full size: a run's part in a sampled source column c covers output rows ys[r0]:ys[r1], so it sets output
    columns xs[c]:xs[c + 1] at the first of those rows and clears them at the row after the last; these marks,
    bucketed by output row, update one row of column states copied into `out` row after row. Marks add 1 or 255
    (mod 256), so the order of the marks within a row does not matter."""
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


def kernels() -> SimpleNamespace:
    """The kernels above by the names rle.py calls them (each compiles on its first call)."""
    if sys.byteorder != "little":  # _scan reads pixel 8q+i from byte i of word q
        raise RuntimeError("kcomp.formats.rle needs a little-endian machine")
    return SimpleNamespace(scan=_scan, column_major=_column_major, format=_format, parse=_parse_bytes,
                           fill_rows=_fill_rows, fill_columns=_fill_columns, fill_text=_fill_text,
                           nearest=_nearest, runs_fit=_runs_fit, sample_rows=_sample_rows,
                           sample_columns=_sample_columns)

"""Soft-NMS that computes only the IoUs that can change its output, with `ensemble_boxes.soft_nms`'s decisions.

The reference decays every remaining box at every step; a box whose score is at or below `thresh` is never
written, and (scores >= 0, factors in [0, 1]) it stays there. Such a box cannot change anything either: it is
selected only once every remaining score is at or below `thresh`, and from that step on nothing is written. So a
group stops at that step, and a selected box decays only the remaining boxes still above `thresh`, found in a grid
of the group's boxes by (x1, y1) (`_window` of the NMS kernel bounds where they can lie). On the clustered
benchmark this is ~1/6 of the overlapping pairs the full computation needs.

Gaussian factors must be numpy's `exp` (its SIMD exp and libm's differ in the last bit on AVX-512 machines), which a
kernel cannot call: `_soft_groups` runs once with libm's exp and records each step's selected box and the boxes it
decays (a trace), numpy computes the factors of the recorded IoUs, and a second run with those factors checks that
it takes the very same steps. Where it does not (a last-bit difference that flips a choice), the caller falls back
to the full computation.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from kcomp.post._nms_hard import GRID, _cell, _window

EPS = 1e-9  # a gaussian decision this close (relative) to flipping is checked with numpy's exp
END = np.iinfo(np.int64).min  # closes a group's trace; a selected row r is -1 - r, a decayed one 2 r + (still above)


@numba.njit(cache=True)
def _grid(co: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The group's rows by the cell of their (x1, y1): cell c's rows are at[cstart[c]:cstart[c + 1]]."""
    cstart = np.zeros(GRID * GRID + 1, np.int64)
    for r in range(n):
        cstart[_cell(co[r, 0]) * GRID + _cell(co[r, 1]) + 1] += 1
    for c in range(GRID * GRID):
        cstart[c + 1] += cstart[c]
    fill, at = cstart[:-1].copy(), np.empty(n, np.int64)
    for r in range(n):
        c = _cell(co[r, 0]) * GRID + _cell(co[r, 1])
        at[fill[c]] = r
        fill[c] += 1
    return cstart, at


@numba.njit(cache=True)
def _live_grid(co: np.ndarray, live: np.ndarray, min_iou: float) -> tuple[np.ndarray, ...]:
    """The live rows by cell (`_grid`; cell c's are at[cstart[c]:cend[c]], row r at where[r]) and how far left
    and down of a box a row with IoU > min_iou can start (the widest and tallest rows)."""
    n = live.shape[0]
    cstart, at = _grid(co, n)
    cend, where = cstart[1:].copy(), np.empty(n, np.int64)
    where[at] = np.arange(n)
    reach = np.zeros(2)
    for r in range(n):
        reach[0], reach[1] = max(reach[0], co[r, 2] - co[r, 0]), max(reach[1], co[r, 3] - co[r, 1])
        if not live[r]:
            _drop(co, r, cend, at, where)
    return cstart, cend, at, where, (1.0 - max(min_iou, 0.0) * (1.0 - 1e-9)) * reach + 1e-12


@numba.njit(cache=True)
def _drop(co: np.ndarray, r: int, cend: np.ndarray, at: np.ndarray, where: np.ndarray) -> None:
    """Row r out of its cell (swapped with the cell's last live row), so the decay search reads live rows only."""
    c = _cell(co[r, 0]) * GRID + _cell(co[r, 1])
    p, last = where[r], cend[c] - 1
    at[p], at[last] = at[last], r
    where[at[p]], where[r] = p, last
    cend[c] = last


@numba.njit(cache=True)
def _rescan(val: np.ndarray, bval: np.ndarray, bpos: np.ndarray, b: int, shift: int, n: int) -> None:
    """Block b's highest value and its position, the first on ties (numpy's argmax picks the first maximum)."""
    lo = b << shift
    best, where = val[lo], lo
    for p in range(lo + 1, min(lo + (1 << shift), n)):
        if val[p] > best:
            best, where = val[p], p
    bval[b], bpos[b] = best, where


@numba.njit(cache=True, error_model="numpy")
def _decayed(co: np.ndarray, ar: np.ndarray, rb: int, cstart: np.ndarray, cend: np.ndarray, at: np.ndarray,
             reach: np.ndarray, min_iou: float, nbr: np.ndarray, ovr: np.ndarray) -> int:
    """The live rows (cell c's are at[cstart[c]:cend[c]]) whose IoU with row rb (the reference's float64
    expression) is > min_iou: written to nbr/ovr, returns how many. A pair with IoU <= min_iou has a factor of
    exactly 1."""
    slack = max(min_iou, 0.0) * (1.0 - 1e-9)
    b = co[rb]
    x0, x1 = _window(b[0] - reach[0], b, 0, slack)
    y0, y1 = _window(b[1] - reach[1], b, 1, slack)
    k = 0
    for cx in range(x0, x1 + 1):
        for c in range(cx * GRID + y0, cx * GRID + y1 + 1):
            for t in range(cstart[c], cend[c]):
                r = at[t]
                w = min(b[2], co[r, 2]) - max(b[0], co[r, 0])
                h = min(b[3], co[r, 3]) - max(b[1], co[r, 1])
                if w > 0.0 and h > 0.0:
                    inter = w * h
                    v = inter / (ar[rb] + ar[r] - inter)
                    if v > min_iou:
                        nbr[k], ovr[k] = r, v
                        k += 1
    return k


@numba.njit(cache=True)
def _soft_group(co: np.ndarray, ar: np.ndarray, s: np.ndarray, linear: bool, iou_thr: float, sigma: float,
                thresh: float, cut: float, trace: np.ndarray, tovr: np.ndarray, tfac: np.ndarray, k: int, replay: bool,
                keep: np.ndarray) -> tuple[int, int, np.ndarray, np.ndarray, bool]:
    """One group as `cpu_soft_nms_float`: at step i the row with the highest current score among positions i..
    (the first on ties) is swapped into position i and decays the rows after it; stops once that score is <= cut
    and decays only rows above cut. Records (or, on replay, checks) the trace from entry k; on replay the factors
    are tfac's. Returns the rows kept (in `keep`, score at selection > thresh), the trace's end, the trace arrays
    and whether the result is certain: a replay kept to the recorded steps, or a gaussian first run made no
    decision within EPS (relative) of flipping. libm's and numpy's exp differ by an ulp or two, so n factors move a
    score by < n * 1e-15 of itself: a decision with a wider margin is the reference's, and the first run is exact.

    Positions are cut in blocks of ~sqrt(n) holding an upper bound of their highest score (scores only fall),
    made exact when a step needs it (`_best`)."""
    n = s.shape[0]
    val, row_at, pos_of, live = s.copy(), np.arange(n), np.arange(n), s > cut
    cstart, cend, at, where, reach = _live_grid(co, live, iou_thr if linear else -1.0)
    nbr, ovr = np.empty(n, np.int64), np.empty(n)
    shift = max(4, int(np.log2(max(n, 1)) / 2 + 0.5))  # blocks of 2**shift ~ sqrt(n) positions
    bval, bpos = np.full(((n - 1) >> shift) + 1, np.inf), np.empty(((n - 1) >> shift) + 1, np.int64)
    exact = np.zeros(bval.shape[0], np.bool_)
    nk, sure, check = 0, n < 100_000, not (replay or linear)
    for i in range(n):
        best = _best(val, bval, bpos, exact, i, shift)
        if check:
            sure &= not (_close(val[best], cut) or _close(val[best], thresh) or _near_tie(val, bval, i, shift, best))
        if not val[best] > cut:
            break
        rb = row_at[best]
        if val[best] > thresh:
            keep[nk] = rb
            nk += 1
        if best != i:  # the reference's swap of rows i and best
            r_i = row_at[i]
            row_at[i], row_at[best], pos_of[rb], pos_of[r_i], val[best] = rb, r_i, i, best, val[i]
            exact[best >> shift] = False
        val[i], live[rb], exact[i >> shift] = -np.inf, False, False
        if replay:
            ok, k = _replayed(trace, tfac, k, rb, val, pos_of, live, cut, bpos, exact, shift)
            if not ok:
                return nk, k, trace, tovr, False
            continue
        _drop(co, rb, cend, at, where)
        m = _decayed(co, ar, rb, cstart, cend, at, reach, iou_thr if linear else -1.0, nbr, ovr)
        if k + m + 2 > trace.shape[0]:
            trace, tovr = _grown(trace, tovr, k + m + 2)
        trace[k], tovr[k], k = -1 - rb, 0.0, k + 1
        for e in range(m):
            f = 1.0 - ovr[e] if linear else math.exp(-(ovr[e] * ovr[e]) / sigma)
            live[nbr[e]] = _decay(val, pos_of[nbr[e]], f, cut, bpos, exact, shift)
            if not live[nbr[e]]:
                _drop(co, nbr[e], cend, at, where)
            sure &= not (check and _close(val[pos_of[nbr[e]]], cut))
            trace[k], tovr[k], k = 2 * nbr[e] + live[nbr[e]], ovr[e], k + 1
    if replay:
        return nk, k + 1, trace, tovr, trace[k] == END
    if k + 1 > trace.shape[0]:
        trace, tovr = _grown(trace, tovr, k + 1)
    trace[k], tovr[k] = END, 0.0
    return nk, k + 1, trace, tovr, sure


@numba.njit(cache=True)
def _best(val: np.ndarray, bval: np.ndarray, bpos: np.ndarray, exact: np.ndarray, i: int, shift: int) -> int:
    """The position of the highest score among positions i.. (earlier ones hold -inf), the first on ties: the
    first block with the highest bound, once its bound is exact (an earlier block's bound, hence its scores, is
    lower; a later one's is not higher)."""
    while True:
        top = i >> shift
        for b in range(top + 1, bval.shape[0]):
            if bval[b] > bval[top]:
                top = b
        if exact[top]:
            return bpos[top]
        _rescan(val, bval, bpos, top, shift, val.shape[0])
        exact[top] = True


@numba.njit(cache=True)
def _close(v: float, c: float) -> bool:
    """Whether v > c could flip when v moves by EPS of itself (or is about to underflow)."""
    return np.isfinite(c) and abs(v - c) <= abs(v) * EPS + 1e-290


@numba.njit(cache=True)
def _near_tie(val: np.ndarray, bval: np.ndarray, i: int, shift: int, best: int) -> bool:
    """Whether a remaining position other than best holds a score within EPS of best's (block bounds skip most),
    or best's score is about to underflow."""
    if abs(val[best]) < 1e-290:  # near underflow the relative bound does not hold
        return True
    lim = val[best] - abs(val[best]) * EPS
    for b in range(i >> shift, bval.shape[0]):
        if bval[b] >= lim:
            for p in range(max(b << shift, i), min((b + 1) << shift, val.shape[0])):
                if p != best and val[p] >= lim:
                    return True
    return False


@numba.njit(cache=True)
def _decay(val: np.ndarray, p: int, f: float, cut: float, bpos: np.ndarray, exact: np.ndarray, shift: int) -> bool:
    """Position p's score times f (the reference's order of operands); whether it stays above cut."""
    val[p] = f * val[p]
    if bpos[p >> shift] == p:
        exact[p >> shift] = False
    return val[p] > cut


@numba.njit(cache=True)
def _replayed(trace: np.ndarray, tfac: np.ndarray, k: int, rb: int, val: np.ndarray, pos_of: np.ndarray,
              live: np.ndarray, cut: float, bpos: np.ndarray, exact: np.ndarray, shift: int) -> tuple[bool, int]:
    """The recorded step from entry k with tfac's factors: the same row selected, and every decayed row above cut
    before and after as recorded (so the rows a step decays are the recorded ones). Returns (kept to it, next k)."""
    if trace[k] != -1 - rb:
        return False, k
    k += 1
    while trace[k] >= 0:
        r = trace[k] >> 1
        if not live[r]:
            return False, k
        live[r] = _decay(val, pos_of[r], tfac[k], cut, bpos, exact, shift)
        if live[r] != (trace[k] & 1):
            return False, k
        k += 1
    return True, k


@numba.njit(cache=True)
def _grown(trace: np.ndarray, tovr: np.ndarray, need: int) -> tuple[np.ndarray, np.ndarray]:
    cap = max(need, 2 * trace.shape[0])
    t, o = np.empty(cap, np.int64), np.empty(cap)
    t[:trace.shape[0]], o[:trace.shape[0]] = trace, tovr
    return t, o


@numba.njit(cache=True)
def _soft_groups(coords: np.ndarray, area: np.ndarray, scores: np.ndarray, gstart: np.ndarray, groups: np.ndarray,
                 linear: bool, iou_thr: float, sigma: float, thresh: float, trace: np.ndarray, tovr: np.ndarray,
                 tstart: np.ndarray, tfac: np.ndarray, replay: bool) -> tuple[np.ndarray, ...]:
    """`_soft_group` over `groups`: kept rows (group by group, in output order) and where each group's start, the
    trace, its IoUs and where each group's trace starts (first run: trace/tovr are room to record, grown as
    needed; replay: the record, group g's from tstart[g]), and whether each group's result is certain. The early
    stop needs thresh >= 0 and a group's scores >= 0 (then a score at or below thresh stays there)."""
    keep, kstart = np.empty(scores.shape[0], np.int64), np.zeros(groups.shape[0] + 1, np.int64)
    tpos, sure = np.zeros(groups.shape[0] + 1, np.int64), np.zeros(groups.shape[0], np.bool_)
    nk, k = 0, 0
    for t in range(groups.shape[0]):
        a, b = gstart[groups[t]], gstart[groups[t] + 1]
        k = tstart[groups[t]] if replay else k
        tpos[t] = k
        cut = thresh if thresh >= 0.0 and scores[a:b].min() >= 0.0 else -np.inf
        m, k, trace, tovr, sure[t] = _soft_group(coords[a:b], area[a:b], scores[a:b], linear, iou_thr, sigma,
                                                 thresh, cut, trace, tovr, tfac, k, replay, keep[nk:])
        keep[nk:nk + m] += a
        nk += m
        kstart[t + 1] = nk
    tpos[-1] = k
    return keep[:nk], kstart, trace[:k], tovr[:k], tpos, sure


def soft_lazy(coords: np.ndarray, area: np.ndarray, scores: np.ndarray, gstart: np.ndarray, method: int,
              iou_thr: float, sigma: float, thresh: float) -> np.ndarray | None:
    """Kept rows in output order (method 1 linear, 2 gaussian), or None where a replay with numpy's factors left
    the recorded steps (the caller then runs the full computation)."""
    n_groups = len(gstart) - 1
    opts = (method == 1, float(iou_thr), float(sigma), float(thresh))
    keep, kstart, trace, tovr, tstart, sure = _soft_groups(
        coords, area, scores, gstart, np.arange(n_groups), *opts, np.empty(1 << 16, np.int64), np.empty(1 << 16),
        np.zeros(1, np.int64), np.zeros(0), False)
    redo = np.flatnonzero(~sure)
    if len(redo) == 0:
        return keep
    factor = np.ones(len(tovr))
    for g in redo.tolist():
        o = tovr[tstart[g]:tstart[g + 1]]
        factor[tstart[g]:tstart[g + 1]] = np.exp(-(o * o) / sigma) if method == 2 else 1.0 - o
    again, astart, _, _, _, ok = _soft_groups(coords, area, scores, gstart, redo, *opts, trace, tovr, tstart, factor,
                                              True)
    if not ok.all():
        return None
    parts = [keep[kstart[g]:kstart[g + 1]] for g in range(n_groups)]
    for t, g in enumerate(redo.tolist()):
        parts[g] = again[astart[t]:astart[t + 1]]
    return np.concatenate(parts)

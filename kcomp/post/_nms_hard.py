"""Greedy NMS of many images in one numba kernel, reproducing `ensemble_boxes.nms` image by image.

A profile of the earlier pipeline (numpy flattening, one lexsort over every box, gathers, then a kernel sorting
each (image, label) group twice) showed the sorts and gathers costing as much as ensemble-boxes' own jitted NMS.
Here one pass per image reads its boxes where they lie (list by list: `rows[starts[m, i]:starts[m, i + 1]]`),
prepares them as the reference does, cuts them by label and runs the greedy selection, with no global sort:
- the score order of a group is a bucket sort on the float bits, which equals numba's `argsort()[::-1]` (the
  reference's) when no two scores are equal; a group with equal scores is ordered by that very call (`_descending`);
- a candidate is kept iff no box kept before it has IoU > iou_thr with it (the reference drops, for each kept box,
  the later boxes above the threshold: the same decisions). Kept boxes sit in a grid by (x1, y1) and a candidate is
  tested only against the cells that can hold a box with IoU > iou_thr (`_window`), its own cell's last suppressor
  first; the IoU itself is the reference's float64 expression, so every decision is the reference's bit for bit.
"""

from __future__ import annotations

import numba
import numpy as np

GRID = 8  # kept boxes of a group in GRID x GRID cells by (x1, y1)


@numba.njit(cache=True)
def _descending(s: np.ndarray) -> np.ndarray:
    """`s.argsort()[::-1]` as numba orders it (the reference's NMS order). Without equal scores that order is the
    only descending one, found here by a bucket sort on order-preserving bit keys (linear for spread scores); with
    equal scores (or a short group) numba's own argsort decides."""
    n = s.shape[0]
    if n < 32:
        return s.argsort()[::-1]
    bits, sign = s.view(np.uint64), np.uint64(1) << np.uint64(63)
    key = np.empty(n, np.uint64)
    for t in range(n):
        key[t] = ~bits[t] if bits[t] & sign else bits[t] | sign
    lo = key.min()
    span, shift = key.max() - lo, np.uint64(0)
    while (span >> shift) >= np.uint64(n):
        shift += np.uint64(1)
    start = np.zeros(int(span >> shift) + 2, np.int64)
    for t in range(n):
        start[int((key[t] - lo) >> shift) + 1] += 1
    for b in range(1, start.shape[0]):
        start[b] += start[b - 1]
    perm = np.empty(n, np.int64)
    for t in range(n):
        b = int((key[t] - lo) >> shift)
        perm[start[b]] = t
        start[b] += 1
    for t in range(1, n):  # buckets are in order: insertion sort only moves rows within their bucket
        p, kv, u = perm[t], key[perm[t]], t - 1
        while u >= 0 and key[perm[u]] > kv:
            perm[u + 1] = perm[u]
            u -= 1
        perm[u + 1] = p
    for t in range(1, n):
        if s[perm[t]] == s[perm[t - 1]]:
            return s.argsort()[::-1]
    return perm[::-1]


@numba.njit(cache=True, error_model="numpy")  # x / 0 is inf (clipped) or NaN (bad input), as in numpy
def _gather(xyxy: np.ndarray, score: np.ndarray, label: np.ndarray, rows: np.ndarray, starts: np.ndarray, i: int,
            scale: np.ndarray, w: np.ndarray, wsum: float, weighted: bool, box: np.ndarray, s: np.ndarray,
            lab: np.ndarray) -> int:
    """Image i's rows, list by list, as the reference prepares them: coordinates / scale clipped to [0, 1], corners
    ordered, zero-area boxes out, score * weight / sum of weights when weighted. Writes box (x1, y1, x2, y2, area),
    s and lab; returns the count, or -1 on a NaN or inf."""
    k = 0
    for m in range(starts.shape[0]):
        for p in range(starts[m, i], starts[m, i + 1]):
            r = rows[p]
            a, b = xyxy[r, 0] / scale[i, 0], xyxy[r, 1] / scale[i, 1]
            c, d = xyxy[r, 2] / scale[i, 2], xyxy[r, 3] / scale[i, 3]
            if (np.isnan(a) or np.isnan(b) or np.isnan(c) or np.isnan(d) or not np.isfinite(score[r])
                    or not np.isfinite(label[r])):  # as np.clip then check_flat: +-inf coordinates clip to 1 / 0
                return -1
            a, b, c, d = min(max(a, 0.0), 1.0), min(max(b, 0.0), 1.0), min(max(c, 0.0), 1.0), min(max(d, 0.0), 1.0)
            x1, x2, y1, y2 = min(a, c), max(a, c), min(b, d), max(b, d)
            area = (x2 - x1) * (y2 - y1)
            if area > 0.0:
                box[k, 0], box[k, 1], box[k, 2], box[k, 3], box[k, 4] = x1, y1, x2, y2, area
                s[k] = score[r] * w[m] / wsum if weighted else score[r]
                lab[k] = label[r]
                k += 1
    return k


@numba.njit(cache=True)
def _by_label(lab: np.ndarray, k: int, gorder: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct labels of rows 0..k-1, ascending (the reference's `np.unique`), and each label's rows in
    their given order: label u's rows are gorder[gstart[u]:gstart[u + 1]]."""
    seen = np.empty(k, np.float64)
    slot = np.empty(k, np.int64)
    n_u = 0
    for t in range(k):
        u = 0
        while u < n_u and seen[u] != lab[t]:
            u += 1
        if u == n_u:
            seen[n_u] = lab[t]
            n_u += 1
        slot[t] = u
    rank = np.empty(n_u, np.int64)
    rank[np.argsort(seen[:n_u])] = np.arange(n_u)
    gstart = np.zeros(n_u + 1, np.int64)
    for t in range(k):
        gstart[rank[slot[t]] + 1] += 1
    for u in range(n_u):
        gstart[u + 1] += gstart[u]
    fill = gstart[:-1].copy()
    for t in range(k):
        gorder[fill[rank[slot[t]]]] = t
        fill[rank[slot[t]]] += 1
    return np.sort(seen[:n_u]), gstart


@numba.njit(cache=True, error_model="numpy")  # no zero-division branch (areas are > 0)
def _hit(kept: np.ndarray, q0: int, q1: int, b: np.ndarray, iou_thr: float, slack: float) -> int:
    """Whether one of kept boxes q0..q1-1 (columns of kept: x1, y1, x2, y2, area) has IoU > iou_thr with box b,
    the IoU as the reference computes it; branch-free, so the loop is vectorised."""
    x1, y1, x2, y2, a = b[0], b[1], b[2], b[3], b[4]
    for q in range(q0, q1):
        w = max(0.0, min(kept[2, q], x2) - max(kept[0, q], x1))
        h = max(0.0, min(kept[3, q], y2) - max(kept[1, q], y1))
        inter = w * h
        union = kept[4, q] + a - inter
        if inter > slack * union and not (inter / union <= iou_thr):
            return q
    return -1


@numba.njit(cache=True)
def _cell(x: float) -> int:
    return min(max(int(x * GRID), 0), GRID - 1)


@numba.njit(cache=True)
def _window(lo: float, b: np.ndarray, axis: int, slack: float) -> tuple[int, int]:
    """The cells along `axis` (0: x, 1: y) that can hold the first corner of a kept box with IoU > t with box b:
    IoU > t >= 0 needs an overlap above t * each box's extent, so that corner lies in (b's - (1 - t) * the kept
    box's extent, b's far edge - t * b's extent); `lo` is b's corner minus the widest such reach, and slack
    stands for t a little lowered (float rounding)."""
    near, far = b[axis], b[axis + 2]
    if slack > 0.0:  # and the kept box's extent is < b's / t (the overlap is at most b's extent)
        lo = max(lo, near - (1.0 - slack) / slack * (far - near) - 1e-9)
    return _cell(lo), _cell(far - slack * (far - near) + 1e-12)


@numba.njit(cache=True)
def _greedy(g: np.ndarray, order: np.ndarray, iou_thr: float, kept: np.ndarray, cstart: np.ndarray,
            cend: np.ndarray, keep: np.ndarray) -> int:
    """Greedy NMS of one group (rows of g: x1, y1, x2, y2, area) in `order`; writes the kept rows to `keep` in
    the reference's order and returns how many. A kept box goes to the cell of its (x1, y1) on a GRID x GRID
    grid (cell c's kept boxes are columns cstart[c]:cend[c] of `kept`); a candidate reads the cells `_window`
    allows, its own first (where its suppressor usually is)."""
    slack = max(iou_thr, 0.0) * (1.0 - 1e-9)
    cstart[:] = 0
    for j in range(order.shape[0]):
        cstart[_cell(g[j, 0]) * GRID + _cell(g[j, 1]) + 1] += 1
    for c in range(GRID * GRID):
        cstart[c + 1] += cstart[c]
    cend[:] = cstart
    hint = np.full(GRID * GRID, -1)
    n_kept, reach_x, reach_y = 0, 1e-12, 1e-12
    for j in order:
        own = _cell(g[j, 0]) * GRID + _cell(g[j, 1])
        by = -1 if hint[own] < 0 else _hit(kept, hint[own], hint[own] + 1, g[j], iou_thr, slack)
        if by < 0:
            by = _hit(kept, cstart[own], cend[own], g[j], iou_thr, slack)
        if by < 0:
            x0, x1 = _window(g[j, 0] - reach_x, g[j], 0, slack)
            y0, y1 = _window(g[j, 1] - reach_y, g[j], 1, slack)
            for cx in range(x0, x1 + 1):
                for c in range(cx * GRID + y0, cx * GRID + y1 + 1):
                    if c != own and by < 0:
                        by = _hit(kept, cstart[c], cend[c], g[j], iou_thr, slack)
        if by >= 0:
            hint[own] = by
            continue
        kept[:, cend[own]] = g[j]
        cend[own] += 1
        reach_x = max(reach_x, (1.0 - slack) * (g[j, 2] - g[j, 0]) + 1e-12)
        reach_y = max(reach_y, (1.0 - slack) * (g[j, 3] - g[j, 1]) + 1e-12)
        keep[n_kept] = j
        n_kept += 1
    return n_kept


@numba.njit(cache=True)
def nms_images(xyxy: np.ndarray, score: np.ndarray, label: np.ndarray, rows: np.ndarray, starts: np.ndarray,
               scale: np.ndarray, w: np.ndarray, wsum: float, weighted: bool, iou_thr: float
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, bool]:
    """NMS of every image i (its list m's rows are rows[starts[m, i]:starts[m, i + 1]], coordinates divided by
    scale[i]). Returns kept boxes, scores, labels and images (images ascending, labels ascending within an image,
    the reference's order within a label), and False if an input holds NaN or inf."""
    n_img = starts.shape[1] - 1
    cap = 1
    for i in range(n_img):
        cap = max(cap, int((starts[:, i + 1] - starts[:, i]).sum()))
    box, s, lab, gorder = np.empty((cap, 5)), np.empty(cap), np.empty(cap), np.empty(cap, np.int64)
    g, gs, kept, keep = np.empty((cap, 5)), np.empty(cap), np.empty((5, cap)), np.empty(cap, np.int64)
    cstart, cend = np.empty(GRID * GRID + 1, np.int64), np.empty(GRID * GRID + 1, np.int64)
    out_b, out_s = np.empty((rows.shape[0], 4)), np.empty(rows.shape[0])
    out_l, out_i = np.empty(rows.shape[0]), np.empty(rows.shape[0], np.int64)
    nk = 0
    for i in range(n_img):
        k = _gather(xyxy, score, label, rows, starts, i, scale, w, wsum, weighted, box, s, lab)
        if k < 0:
            return out_b[:0], out_s[:0], out_l[:0], out_i[:0], False
        labels, gstart = _by_label(lab, k, gorder)
        for u in range(labels.shape[0]):
            m = gstart[u + 1] - gstart[u]
            for t in range(m):
                g[t, :], gs[t] = box[gorder[gstart[u] + t], :], s[gorder[gstart[u] + t]]
            n_kept = _greedy(g, _descending(gs[:m]), iou_thr, kept, cstart, cend, keep)
            for t in range(n_kept):
                out_b[nk, :] = g[keep[t], :4]
                out_s[nk], out_l[nk], out_i[nk] = gs[keep[t]], labels[u], i
                nk += 1
    return out_b[:nk].copy(), out_s[:nk].copy(), out_l[:nk].copy(), out_i[:nk].copy(), True

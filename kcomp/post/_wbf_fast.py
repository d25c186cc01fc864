"""Weighted boxes fusion for many images in one pass, reproducing `ensemble_boxes.weighted_boxes_fusion`.

ensemble-boxes loops in Python per box and per image (SIIM top solutions spent ~1 h in it); here the prefilter, the
grouping and both sorts run over all images at once and the greedy clustering in one numba kernel. The arithmetic
copies the reference step by step so the output is the same to the last bit on numpy >= 2 (NEP 50 casting):
- a cluster of one keeps its input row (float64); a larger cluster's box, score and weight are the float32 values
  `get_weighted_box` stores (running float32 sums of score*coord, float64 conf and weight sums);
- matching is against each cluster's current box, IoU in float64, first best index, match only if IoU > iou_thr;
  clusters whose box does not overlap are skipped where that cannot change the match (`_match`);
- the final rescaling per conf_type uses numpy's pairwise summation order for the per-model weight sums;
- both sorts (per label before clustering, per image at the end) are `np.argsort(x)[::-1]`, which orders exact
  ties by numpy's introsort. Groups without ties have one descending order, so any sort gives it; groups with ties
  are re-sorted by that very `np.argsort` call on the reference's own insertion order.
Timings: benchmarks/RESULTS.md.
"""

from __future__ import annotations

from collections.abc import Sequence

import numba
import numpy as np

from kcomp.errors import BadInput, BadUsage

CONF_CODES = {"avg": 0, "max": 1, "box_and_model_avg": 2, "absent_model_aware_avg": 3}


def weighted_boxes_fusion(boxes_list: Sequence[np.ndarray], scores_list: Sequence[np.ndarray],
                          labels_list: Sequence[np.ndarray], weights: Sequence[float] | None = None,
                          iou_thr: float = 0.55, skip_box_thr: float = 0.0, conf_type: str = "avg",
                          allows_overflow: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Drop-in for one image: same arguments and outputs as `ensemble_boxes.weighted_boxes_fusion`."""
    flat, scores, labels, models = flatten_lists(boxes_list, scores_list, labels_list)
    fb, fs, fl, _ = wbf_flat(flat, scores, labels, models, np.zeros(len(flat), dtype=np.int64), len(boxes_list),
                             weights=weights, iou_thr=iou_thr, skip_box_thr=skip_box_thr, conf_type=conf_type,
                             allows_overflow=allows_overflow)
    return fb, fs, fl


def flatten_lists(boxes_list: Sequence[np.ndarray], scores_list: Sequence[np.ndarray],
                  labels_list: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One image's box lists (ensemble-boxes' arguments) as flat rows: boxes, scores, labels and list index."""
    boxes = [np.asarray(b, dtype=np.float64).reshape(-1, 4) for b in boxes_list]
    flat = np.concatenate(boxes) if boxes else np.zeros((0, 4))
    scores = np.concatenate([np.asarray(s, dtype=np.float64).reshape(-1) for s in scores_list] or [np.zeros(0)])
    labels = np.concatenate([np.asarray(v, dtype=np.float64).reshape(-1) for v in labels_list] or [np.zeros(0)])
    return flat, scores, labels, np.repeat(np.arange(len(boxes)), np.array([len(b) for b in boxes], dtype=np.int64))


def wbf_flat(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, models: np.ndarray, images: np.ndarray,
             n_models: int, *, weights: Sequence[float] | None = None, iou_thr: float = 0.55,
             skip_box_thr: float = 0.0, conf_type: str = "avg", allows_overflow: bool = False,
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Fuse every image's boxes at once. One row per input box: normalised `boxes` (N,4) x1,y1,x2,y2, `scores`,
    `labels`, the list it came from (`models`, 0..n_models-1) and its image (any int). Rows of one image and model
    keep their given order (it breaks ties, as list order does in the reference).

    Returns fused boxes (K,4), scores, labels (float) and image of each row: images ascending, within an image the
    reference's order (score descending)."""
    if conf_type not in CONF_CODES:
        raise BadUsage(f"conf_type {conf_type!r}: choose one of {', '.join(CONF_CODES)}")
    boxes, scores, labels, models, images, w = check_flat(boxes, scores, labels, models, images, n_models, weights)

    order = np.lexsort((models, images))  # stable: list order kept within (image, model)
    coords, ws, wt, models, lab, group, group_image = _prefiltered(boxes, scores, labels, models, images, order, w,
                                                                   float(skip_box_thr))
    if len(ws) == 0:
        return np.zeros((0, 4)), np.zeros(0), np.zeros(0), np.zeros(0, dtype=np.int64)
    gstart = np.concatenate([[0], np.cumsum(np.bincount(group))])
    perm = _descending(ws, group, gstart)
    args = (coords[perm], ws[perm], wt[perm], models[perm], lab[perm], gstart)
    fb, fs, fl, fg = _cluster(*args, w, float(w.sum()), float(w.max()), float(iou_thr), CONF_CODES[conf_type],
                             bool(allows_overflow), bool(iou_thr >= 0 and (ws >= 0).all()))
    fi = group_image[fg]
    istart = np.concatenate([[0], np.cumsum(np.unique(fi, return_counts=True)[1])])
    perm = _descending(fs, np.repeat(np.arange(len(istart) - 1), np.diff(istart)), istart)
    return fb[perm], fs[perm], fl[perm], fi[perm]


@numba.njit(cache=True)
def _prefiltered(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, models: np.ndarray, images: np.ndarray,
                 order: np.ndarray, w: np.ndarray, skip_box_thr: float) -> tuple[np.ndarray, ...]:
    """Rows taken in `order` (image, then list) through ensemble_boxes.prefilter_boxes: score < skip_box_thr out,
    corners ordered, clipped to [0, 1], zero area out; the score weighted by its list. Each kept row gets its group:
    one per (image, int(label)), an image's groups numbered in order of first appearance (the reference's dict
    order). Returns coords, weighted scores, weights, lists, labels (truncated, as float), group of each kept row,
    and the image of each group."""
    n = order.shape[0]
    coords, ws, wt = np.empty((n, 4)), np.empty(n), np.empty(n)
    mods, lab, group = np.empty(n, dtype=np.int64), np.empty(n), np.empty(n, dtype=np.int64)
    group_image = np.empty(n, dtype=np.int64)
    seen_lab, seen_group = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64)
    k, n_groups, n_seen, image = 0, 0, 0, -1
    for r in range(n):
        i = order[r]
        x1, y1, x2, y2 = boxes[i, 0], boxes[i, 1], boxes[i, 2], boxes[i, 3]
        if x2 < x1:
            x1, x2 = x2, x1
        if y2 < y1:
            y1, y2 = y2, y1
        x1, y1 = min(max(x1, 0.0), 1.0), min(max(y1, 0.0), 1.0)
        x2, y2 = min(max(x2, 0.0), 1.0), min(max(y2, 0.0), 1.0)
        if scores[i] < skip_box_thr or (x2 - x1) * (y2 - y1) == 0.0:
            continue
        if images[i] != image:
            image, n_seen = images[i], 0
        label = np.int64(labels[i])  # int() truncation, as the reference keys its dict
        g = -1
        for t in range(n_seen):
            if seen_lab[t] == label:
                g = seen_group[t]
                break
        if g < 0:
            g = n_groups
            seen_lab[n_seen], seen_group[n_seen] = label, g
            group_image[g] = image
            n_seen += 1
            n_groups += 1
        coords[k, 0], coords[k, 1], coords[k, 2], coords[k, 3] = x1, y1, x2, y2
        wt[k] = w[models[i]]
        ws[k] = scores[i] * wt[k]
        mods[k], lab[k], group[k] = models[i], np.float64(label), g
        k += 1
    return coords[:k], ws[:k], wt[:k], mods[:k], lab[:k], group[:k], group_image[:n_groups]


def check_flat(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, models: np.ndarray, images: np.ndarray,
               n_models: int, weights: Sequence[float] | None) -> tuple[np.ndarray, ...]:
    """The flat inputs as float64/int64 arrays of equal length, finite, with valid list indices, and the weights
    (ones if None): (boxes, scores, labels, models, images, weights)."""
    w = check_weights(weights, n_models)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64)
    models = np.asarray(models, dtype=np.int64)
    images = np.asarray(images, dtype=np.int64)
    if not (len(boxes) == len(scores) == len(labels) == len(models) == len(images)):
        raise BadInput(f"boxes {len(boxes)}, scores {len(scores)}, labels {len(labels)}, models {len(models)} and "
                       f"images {len(images)} rows differ")
    if not (np.isfinite(boxes).all() and np.isfinite(scores).all() and np.isfinite(labels).all()):
        raise BadInput("NaN or inf in boxes, scores or labels")
    if len(models) and (models.min() < 0 or models.max() >= n_models):
        raise BadInput(f"model index outside 0..{n_models - 1}")
    return boxes, scores, labels, models, images, w


def check_weights(weights: Sequence[float] | None, n_models: int) -> np.ndarray:
    """One positive finite weight per box list, as float64 (ones if None)."""
    w = np.ones(n_models) if weights is None else np.asarray(weights, dtype=np.float64)
    if len(w) != n_models:
        raise BadUsage(f"{len(w)} weight(s) for {n_models} box list(s)")
    if not (np.isfinite(w).all() and (w > 0).all()):
        raise BadUsage(f"weights must be positive numbers, got {w.tolist()}")
    return w


def _descending(values: np.ndarray, group: np.ndarray, start: np.ndarray) -> np.ndarray:
    """Permutation sorting `values` descending within each group (rows grouped in `group` order, group g in
    start[g]:start[g+1] afterwards) exactly as `np.argsort(v)[::-1]` would on that group's rows in given order."""
    given = np.argsort(group, kind="stable")
    perm, tied = _sort_groups(values, given, start)
    for k in np.flatnonzero(tied).tolist():
        rows = given[start[k]:start[k + 1]]
        perm[start[k]:start[k + 1]] = rows[np.argsort(values[rows])[::-1]]
    return perm


@numba.njit(cache=True)
def _sort_groups(values: np.ndarray, given: np.ndarray, start: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each group's rows by descending value, and which groups hold equal values (or NaN): only those have more
    than one descending order, and `_descending` re-sorts them with numpy's own argsort."""
    perm = np.empty_like(given)
    tied = np.zeros(start.shape[0] - 1, dtype=np.bool_)
    for g in range(start.shape[0] - 1):
        a, b = start[g], start[g + 1]
        rows = given[a:b]
        v = values[rows]
        o = np.argsort(v)
        for t in range(b - a):
            perm[a + t] = rows[o[b - a - 1 - t]]
            if (t > 0 and v[o[t]] == v[o[t - 1]]) or np.isnan(v[o[t]]):
                tied[g] = True
    return perm, tied


@numba.njit(cache=True)
def _block_sum(a: np.ndarray, lo: int, n: int) -> float:
    """numpy's float64 add.reduce of n <= 128 values: 8 partial sums combined pairwise, then the tail."""
    if n < 8:
        res = 0.0
        for i in range(lo, lo + n):
            res += a[i]
        return res
    r = a[lo:lo + 8].copy()
    i = 8
    while i < n - (n % 8):
        for j in range(8):
            r[j] += a[lo + i + j]
        i += 8
    res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]))
    while i < n:
        res += a[lo + i]
        i += 1
    return res


@numba.njit(cache=True)
def _pairwise_sum(a: np.ndarray, n: int) -> float:
    """`a[:n].sum()` rounded exactly as numpy does (halves split at multiples of 8 above 128 values). Written with
    an explicit stack: numba's on-disk cache of recursive functions crashes when loaded."""
    if n <= 128:
        return _block_sum(a, 0, n)
    st_lo = np.empty(128, dtype=np.int64)
    st_n = np.empty(128, dtype=np.int64)
    st_done = np.zeros(128, dtype=np.bool_)
    vals = np.empty(128)
    sp, nv = 1, 0
    st_lo[0], st_n[0], st_done[0] = 0, n, False
    while sp > 0:
        sp -= 1
        lo, m, done = st_lo[sp], st_n[sp], st_done[sp]
        if m <= 128:
            vals[nv] = _block_sum(a, lo, m)
            nv += 1
        elif done:
            vals[nv - 2] = vals[nv - 2] + vals[nv - 1]
            nv -= 1
        else:
            n2 = m // 2
            n2 -= n2 % 8
            st_lo[sp], st_n[sp], st_done[sp] = lo, m, True
            st_lo[sp + 1], st_n[sp + 1], st_done[sp + 1] = lo + n2, m - n2, False
            st_lo[sp + 2], st_n[sp + 2], st_done[sp + 2] = lo, n2, False
            sp += 3
    return vals[0]


@numba.njit(cache=True, error_model="numpy")
def _match(rt: np.ndarray, nc: int, bx1: float, by1: float, bx2: float, by2: float, prune: bool,
           cand: np.ndarray, ok: np.ndarray) -> tuple[int, float]:
    """The cluster a box would join, as ensemble-boxes' find_matching_box_fast picks it: the first highest IoU
    (the first NaN if any) with clusters 0..nc-1, and that IoU. With `prune` (iou_thr >= 0, no NaN box in the
    group, no negative score) clusters that do not overlap the box are skipped: their IoU is exactly 0, which
    never matches."""
    m = 0
    if prune:  # the overlap test in a loop the compiler vectorises, then the survivors' indices
        for c in range(nc):
            ok[c] = (min(rt[2, c], bx2) > max(rt[0, c], bx1)) & (min(rt[3, c], by2) > max(rt[1, c], by1))
        for c in range(nc):
            cand[m] = c
            m += ok[c]
    else:
        for c in range(nc):
            cand[c] = c
        m = nc
    area_b = (bx2 - bx1) * (by2 - by1)
    best, best_iou, best_nan = -1, -np.inf, False
    for k in range(m):
        c = cand[k]
        xa = max(rt[0, c], bx1)
        ya = max(rt[1, c], by1)
        xb = min(rt[2, c], bx2)
        yb = min(rt[3, c], by2)
        inter = max(xb - xa, 0.0) * max(yb - ya, 0.0)
        area_a = (rt[2, c] - rt[0, c]) * (rt[3, c] - rt[1, c])
        iou = inter / (area_a + area_b - inter)
        if np.isnan(iou):  # np.argmax takes the first NaN; a cluster of zero scores has a NaN box
            if not best_nan:
                best, best_iou, best_nan = c, iou, True
        elif not best_nan and iou > best_iou:
            best, best_iou = c, iou
    return best, best_iou


@numba.njit(cache=True, error_model="numpy")  # 0/0 is NaN, as in numpy, not ZeroDivisionError
def _cluster(coords: np.ndarray, ws: np.ndarray, wt: np.ndarray, models: np.ndarray, labels: np.ndarray,
             gstart: np.ndarray, weights: np.ndarray, wsum: float, wmax: float, iou_thr: float, conf: int,
             overflow: bool, prune: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Greedy clustering of each group's rows (sorted by score), then the reference's conf rescaling. `prune`
    (iou_thr >= 0 and no negative score, so cluster boxes are convex combinations of boxes) lets `_match` skip
    clusters that do not overlap.

    Returns fused boxes, scores, labels and group of each cluster, groups in order, clusters in creation order."""
    n = coords.shape[0]
    n_models = weights.shape[0]
    out_box = np.empty((n, 4))
    out_score = np.empty(n)
    out_label = np.empty(n)
    out_group = np.empty(n, dtype=np.int64)
    rt = np.empty((4, n))  # each cluster's current box, compared against: x1, y1, x2, y2 rows (contiguous scans)
    acc = np.empty((n, 4), dtype=np.float32)  # running float32 sum of score * coord
    csum = np.empty(n)  # float64 sum of scores
    cmax = np.empty(n)
    wsum_c = np.empty(n)  # float64 sum of model weights
    count = np.empty(n, dtype=np.int64)
    first = np.empty(n, dtype=np.int64)
    member = np.empty(n, dtype=np.int64)  # cluster of each row
    cand, ok = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.bool_)  # scratch of `_match`
    buf = np.empty(n_models)
    k_out = 0
    for g in range(gstart.shape[0] - 1):
        a, b = gstart[g], gstart[g + 1]
        nc, n_nan = 0, 0  # a cluster of zero scores has a NaN box (0 / 0)
        for j in range(a, b):
            bx1, by1, bx2, by2 = coords[j, 0], coords[j, 1], coords[j, 2], coords[j, 3]
            best, best_iou = _match(rt, nc, bx1, by1, bx2, by2, prune and n_nan == 0, cand, ok)
            s = ws[j]
            if best >= 0 and not best_iou <= iou_thr:
                c = best
                csum[c] += s
                wsum_c[c] += wt[j]
                cmax[c] = max(cmax[c], s)
                count[c] += 1
                was_nan = np.isnan(rt[0, c])
                for q in range(4):
                    acc[c, q] = np.float32(np.float64(acc[c, q]) + s * coords[j, q])
                    rt[q, c] = np.float64(np.float32(np.float64(acc[c, q]) / csum[c]))
                n_nan += int(np.isnan(rt[0, c])) - int(was_nan)
            else:
                c = nc
                nc += 1
                for q in range(4):
                    rt[q, c] = coords[j, q]
                    acc[c, q] = np.float32(s * coords[j, q])
                csum[c] = s
                cmax[c] = s
                wsum_c[c] = wt[j]
                count[c] = 1
                first[c] = j
            member[j] = c
        if conf == 2 or conf == 3:  # which models each cluster holds
            seen = np.zeros((nc, n_models), dtype=np.bool_)
            for j in range(a, b):
                seen[member[j], models[j]] = True
        else:
            seen = np.zeros((0, 0), dtype=np.bool_)
        for c in range(nc):
            m = count[c]
            if m == 1:
                score, wc = ws[first[c]], wt[first[c]]
            else:
                score = np.float64(np.float32(cmax[c] if conf == 1 else csum[c] / m))
                wc = np.float64(np.float32(wsum_c[c]))
            if conf == 2 or conf == 3:
                nb = 0
                for t in range(n_models):
                    if seen[c, t] == (conf == 2):
                        buf[nb] = weights[t]
                        nb += 1
                part = _pairwise_sum(buf, nb)
                if conf == 2:
                    score = score * m / wc
                    score = score * part / wsum
                else:
                    score = score * m / (wc + part)
            elif conf == 1:
                score = score / wmax
            elif overflow:
                score = score * m / wsum
            else:
                score = score * min(n_models, m) / wsum
            for q in range(4):
                out_box[k_out, q] = rt[q, c]
            out_score[k_out] = score
            out_label[k_out] = labels[first[c]] if m == 1 else np.float64(np.float32(labels[first[c]]))
            out_group[k_out] = g
            k_out += 1
    return out_box[:k_out], out_score[:k_out], out_label[:k_out], out_group[:k_out]

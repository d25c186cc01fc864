"""NMS and soft-NMS for many images in one pass, reproducing `ensemble_boxes.nms` and `ensemble_boxes.soft_nms`.

ensemble-boxes runs both image by image and label by label (NMS in a jitted kernel, soft-NMS row by row in numpy).
Here every image's boxes are prepared at once as the reference prepares them (scores times weight / sum of weights
when weights are given; coordinates clipped to [0, 1], corners ordered, zero-area boxes dropped), cut in one group
per (image, label) (labels ascending, rows in list order: the reference's concatenation), and selected by numba
kernels that make the reference's decisions with fewer IoUs:
- NMS: one pass per image with no global sort, kept boxes in a grid (`kcomp.post._nms_hard`);
- soft-NMS: only the pairs that can change the output are computed (`kcomp.post._soft_lazy`: a group stops once
  every remaining score is at or below `thresh`, and only boxes above it are decayed). Should that path not be
  certain of the reference's decisions (see there), all pairs of overlapping boxes are found by a sweep along x, a
  chunk of groups at a time (`_overlaps`), before the selection (`_soft_select`).
IoUs are computed with the reference's float64 operations. What else keeps the output identical, bit for bit and
in order:
- NMS orders a group as numba's `argsort()[::-1]`, the reference's own jitted kernel, does (numba's quicksort
  decides the order of equal scores, not numpy's);
- soft-NMS factors are `np.exp(-(iou * iou) / sigma)` computed by numpy: numpy's SIMD exp and the libm exp a numba
  kernel would call differ in the last bit for ~5% of arguments on AVX-512 machines (the lazy path uses libm's only
  where no decision is within 1e-9 of flipping, and checks the others with numpy's). They are applied in the
  reference's order, and the selection keeps the reference's "highest current score, first in the current row
  order" with its swap of the selected row and the current one;
- soft-NMS returns each kept box's input (weighted) score: the reference's decayed scores only decide the order and
  which boxes stay above `thresh`.
Differences: wrong weights are an error here (the reference prints a warning and ignores them); NMS needs
iou_thr >= 0 and soft-NMS sigma > 0 (the reference's output for those is degenerate); an image without boxes, or
whose boxes all have zero area, gives no boxes (the reference raises ValueError on it). Timings:
benchmarks/RESULTS.md.
"""

from __future__ import annotations

from collections.abc import Sequence

import numba
import numpy as np

from kcomp.errors import BadInput, BadUsage
from kcomp.post._nms_hard import nms_images
from kcomp.post._soft_lazy import soft_lazy
from kcomp.post._wbf_fast import check_flat, check_weights, flatten_lists

PAIR_CHUNK = 1 << 20  # soft-NMS: overlapping pairs held at once (16 bytes each); grown when one group has more


def nms(boxes_list: Sequence[np.ndarray], scores_list: Sequence[np.ndarray], labels_list: Sequence[np.ndarray],
        iou_thr: float = 0.5, weights: Sequence[float] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Drop-in for one image: same arguments and outputs as `ensemble_boxes.nms`."""
    flat, scores, labels, models = flatten_lists(boxes_list, scores_list, labels_list)
    fb, fs, fl, _ = nms_flat(flat, scores, labels, models, np.zeros(len(flat), np.int64), len(boxes_list),
                             weights=weights, iou_thr=iou_thr)
    return fb, fs, fl


def soft_nms(boxes_list: Sequence[np.ndarray], scores_list: Sequence[np.ndarray], labels_list: Sequence[np.ndarray],
             method: int = 2, iou_thr: float = 0.5, sigma: float = 0.5, thresh: float = 0.001,
             weights: Sequence[float] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Drop-in for one image: same arguments and outputs as `ensemble_boxes.soft_nms` (method 1 linear, 2 gaussian)."""
    flat, scores, labels, models = flatten_lists(boxes_list, scores_list, labels_list)
    fb, fs, fl, _ = soft_nms_flat(flat, scores, labels, models, np.zeros(len(flat), np.int64), len(boxes_list),
                                  weights=weights, method=method, iou_thr=iou_thr, sigma=sigma, thresh=thresh)
    return fb, fs, fl


def nms_flat(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, models: np.ndarray, images: np.ndarray,
             n_models: int, *, weights: Sequence[float] | None = None, iou_thr: float = 0.5
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Rows as `wbf_flat` takes them; returns kept boxes, scores, labels and images: images ascending, within an
    image labels ascending, within a label the reference's order (score descending)."""
    boxes, scores, labels, models, images, _ = check_flat(boxes, scores, labels, models, images, n_models, weights)
    ids, code = np.unique(images, return_inverse=True)
    rows, starts = _segments(models, code.astype(np.int64), n_models, len(ids))
    fb, fs, fl, fi = nms_segments(boxes, scores, labels, rows, starts, np.ones((len(ids), 4)), weights=weights,
                                  iou_thr=iou_thr)
    return fb, fs, fl, ids[fi]


def nms_segments(xyxy: np.ndarray, score: np.ndarray, label: np.ndarray, rows: np.ndarray, starts: np.ndarray,
                 scale: np.ndarray, *, weights: Sequence[float] | None = None, iou_thr: float = 0.5
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """NMS of images 0..len(scale)-1 whose list m's rows are rows[starts[m, i]:starts[m, i + 1]], in coordinates
    divided by scale[i] (x, y, x, y); returns as `nms_flat`, images as indices. `kcomp.post._nms_hard` says how."""
    if not iou_thr >= 0:
        raise BadUsage(f"iou_thr {iou_thr}: NMS needs a threshold >= 0")
    w = check_weights(weights, starts.shape[0])
    fb, fs, fl, fi, finite = nms_images(xyxy, score, np.asarray(label, np.float64), rows, starts, scale, w,
                                        float(w.sum()), weights is not None, float(iou_thr))
    if not finite:
        raise BadInput("NaN or inf in boxes, scores or labels")
    return fb, fs, fl, fi


@numba.njit(cache=True)
def _segments(models: np.ndarray, images: np.ndarray, n_models: int, n_images: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows stably ordered by (list, image) and where each (list, image)'s rows start: a counting sort."""
    starts = np.zeros(n_models * n_images + 1, np.int64)
    for r in range(models.shape[0]):
        starts[models[r] * n_images + images[r] + 1] += 1
    for k in range(n_models * n_images):
        starts[k + 1] += starts[k]
    fill = starts[:-1].copy()
    rows = np.empty(models.shape[0], np.int64)
    for r in range(models.shape[0]):
        k = models[r] * n_images + images[r]
        rows[fill[k]] = r
        fill[k] += 1
    out = np.empty((n_models, n_images + 1), np.int64)
    for m in range(n_models):
        out[m] = starts[m * n_images:(m + 1) * n_images + 1]
    return rows, out


def soft_nms_flat(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, models: np.ndarray, images: np.ndarray,
                  n_models: int, *, weights: Sequence[float] | None = None, method: int = 2, iou_thr: float = 0.5,
                  sigma: float = 0.5, thresh: float = 0.001) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """As `nms_flat`; `method` 1 is linear (factor 1 - IoU above iou_thr), 2 gaussian (exp(-IoU^2 / sigma))."""
    if method not in (1, 2):
        raise BadUsage(f"soft-NMS method {method}: choose 1 (linear) or 2 (gaussian)")
    if not sigma > 0:
        raise BadUsage(f"sigma {sigma}: soft-NMS needs sigma > 0")
    return _run(boxes, scores, labels, models, images, n_models, weights, method, float(iou_thr), float(sigma),
                float(thresh))


def _run(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, models: np.ndarray, images: np.ndarray,
         n_models: int, weights: Sequence[float] | None, method: int, iou_thr: float, sigma: float, thresh: float
         ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    boxes, scores, labels, models, images, w = check_flat(boxes, scores, labels, models, images, n_models, weights)
    if weights is not None:  # as the reference: (score * weight) / sum of weights
        scores = scores * w[models] / w.sum()
    coords, area = _prepared(boxes)
    _, code = np.unique(labels, return_inverse=True)
    order = np.lexsort((models, code, images))  # stable: list order kept within (image, label, model)
    order = order[area[order] > 0]  # zero-area boxes out
    if len(order) == 0:
        return np.zeros((0, 4)), np.zeros(0), np.zeros(0), np.zeros(0, dtype=np.int64)
    coords, area, scores, labels, images, code = (a[order] for a in (coords, area, scores, labels, images, code))
    key = images * (int(code.max()) + 1) + code
    gstart = np.concatenate([[0], np.flatnonzero(np.diff(key)) + 1, [len(key)]]).astype(np.int64)
    rows = _select(coords, area, scores, gstart, method, iou_thr, sigma, thresh)
    return coords[rows], scores[rows], labels[rows], images[rows]


@numba.njit(cache=True)
def _prepared(boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The reference's `prepare_boxes` in one pass: coordinates clipped to [0, 1], corners ordered, and areas."""
    coords = np.empty_like(boxes)
    area = np.empty(boxes.shape[0])
    for k in range(boxes.shape[0]):
        x1, y1 = min(max(boxes[k, 0], 0.0), 1.0), min(max(boxes[k, 1], 0.0), 1.0)
        x2, y2 = min(max(boxes[k, 2], 0.0), 1.0), min(max(boxes[k, 3], 0.0), 1.0)
        coords[k, 0], coords[k, 2] = min(x1, x2), max(x1, x2)
        coords[k, 1], coords[k, 3] = min(y1, y2), max(y1, y2)
        area[k] = (coords[k, 2] - coords[k, 0]) * (coords[k, 3] - coords[k, 1])
    return coords, area


def _select(coords: np.ndarray, area: np.ndarray, scores: np.ndarray, gstart: np.ndarray, method: int,
            iou_thr: float, sigma: float, thresh: float) -> np.ndarray:
    """Kept rows in output order; soft-NMS takes the groups' overlapping pairs a chunk of groups at a time."""
    kept = soft_lazy(coords, area, scores, gstart, method, iou_thr, sigma, thresh)
    if kept is not None:
        return kept
    keep = np.empty(len(scores), dtype=np.int64)
    n_keep, g, n_groups, cap = 0, 0, len(gstart) - 1, PAIR_CHUNK
    pstart = np.empty(n_groups + 1, np.int64)
    pa, pb, iou = np.empty(cap, np.int32), np.empty(cap, np.int32), np.empty(cap)
    while g < n_groups:
        g_end = _overlaps(coords, area, gstart, g, -1.0 if method == 2 else iou_thr, pa, pb, iou, pstart)
        if g_end == g:  # one group has more pairs than fit: make room
            cap *= 2
            pa, pb, iou = np.empty(cap, np.int32), np.empty(cap, np.int32), np.empty(cap)
            continue
        n = pstart[g_end - g]
        ovr = iou[:n]
        factor = np.exp(-(ovr * ovr) / sigma) if method == 2 else np.where(ovr > iou_thr, 1.0 - ovr, 1.0)
        n_keep += _soft_select(scores, gstart, g, g_end, pstart, pa, pb, factor, thresh, keep[n_keep:])
        g = g_end
    return keep[:n_keep]


@numba.njit(cache=True)
def _overlaps(coords: np.ndarray, area: np.ndarray, gstart: np.ndarray, g0: int, min_iou: float, pa: np.ndarray,
              pb: np.ndarray, iou: np.ndarray, pstart: np.ndarray) -> int:
    """Pairs of overlapping boxes with IoU > min_iou (rows a, b counted from their group's first row, and the IoU
    computed as the reference does), of groups g0, g0 + 1, ... while whole groups fit; group g0 + k's pairs are
    pstart[k]:pstart[k + 1]. Returns the first group not written.

    Boxes are swept by x1. IoU > t >= 0 needs an overlap above t * the wider box's width along x (and height
    along y): inter > t * union >= t * max(area), and inter <= overlap_x * min(height). So the sweep stops and
    the branch-free test rejects a little before those bounds (1e-9 relative slack: float rounding is ~1e-16)."""
    n = 0
    pstart[0] = 0
    slack = max(min_iou, 0.0) * (1.0 - 1e-9)
    for g in range(g0, gstart.shape[0] - 1):
        a, b = gstart[g], gstart[g + 1]
        by_x = np.argsort(coords[a:b, 0].copy())
        group = coords[a:b]  # sorted copies: the sweep reads in order
        sx1, sy1, sx2, sy2 = group[by_x, 0], group[by_x, 1], group[by_x, 2], group[by_x, 3]
        sa = area[a:b][by_x]
        cand = np.empty(b - a, dtype=np.int64)
        for p in range(b - a):
            x1, y1, x2, y2 = sx1[p], sy1[p], sx2[p], sy2[p]
            stop = x2 - slack * (x2 - x1) + 1e-12
            m = 0
            for q in range(p + 1, b - a):
                if sx1[q] >= stop:  # sorted by x1: no later box overlaps box p enough along x
                    break
                cand[m] = q
                over_x = min(x2, sx2[q]) - sx1[q]
                over_y = min(y2, sy2[q]) - max(y1, sy1[q])
                m += (over_x > slack * max(x2 - x1, sx2[q] - sx1[q]) - 1e-12) & (over_x > 0.0) & \
                    (over_y > slack * max(y2 - y1, sy2[q] - sy1[q]) - 1e-12) & (over_y > 0.0)
            for k in range(m):
                q = cand[k]
                w = min(x2, sx2[q]) - max(x1, sx1[q])
                h = min(y2, sy2[q]) - max(y1, sy1[q])
                inter = w * h
                v = inter / (sa[p] + sa[q] - inter)
                if v > min_iou:
                    if n == pa.shape[0]:
                        return g
                    pa[n], pb[n], iou[n] = by_x[p], by_x[q], v
                    n += 1
        pstart[g - g0 + 1] = n
    return gstart.shape[0] - 1


@numba.njit(cache=True)
def _neighbours(m: int, pa: np.ndarray, pb: np.ndarray, val: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One group's pairs in both directions as adjacency lists of its rows 0..m-1: (start, neighbour, value)."""
    start = np.zeros(m + 1, dtype=np.int64)
    for k in range(pa.shape[0]):
        start[pa[k] + 1] += 1
        start[pb[k] + 1] += 1
    for r in range(m):
        start[r + 1] += start[r]
    fill = start[:-1].copy()
    nbr = np.empty(2 * pa.shape[0], dtype=np.int32)
    v = np.empty(2 * pa.shape[0])
    for k in range(pa.shape[0]):
        x, y = pa[k], pb[k]
        nbr[fill[x]], v[fill[x]] = y, val[k]
        fill[x] += 1
        nbr[fill[y]], v[fill[y]] = x, val[k]
        fill[y] += 1
    return start, nbr, v


@numba.njit(cache=True)
def _rescan(val: np.ndarray, bval: np.ndarray, bpos: np.ndarray, b: int, width: int, n: int) -> None:
    """Block b's highest value and its position, the first on ties (numpy's argmax picks the first maximum)."""
    lo = b * width
    best, where = val[lo], lo
    for p in range(lo + 1, min(lo + width, n)):
        if val[p] > best:
            best, where = val[p], p
    bval[b], bpos[b] = best, where


@numba.njit(cache=True)
def _soft_select(scores: np.ndarray, gstart: np.ndarray, g0: int, g1: int, pstart: np.ndarray, pa: np.ndarray,
                 pb: np.ndarray, factor: np.ndarray, thresh: float, keep: np.ndarray) -> int:
    """Soft-NMS of groups g0..g1-1 as `ensemble_boxes.cpu_soft_nms_float`: at step i the row with the highest
    current score among positions i.. (the first on ties) is swapped into position i, unless position i has it
    already, and the rows after it that overlap it have their score multiplied by the pair's factor. Rows whose
    score at selection is above `thresh` are written to `keep` in position order; returns how many.

    Positions are cut in blocks of ~sqrt(n) that know their highest score: a step scans the block maxima, and a
    decayed score costs a block rescan only when it was its block's maximum."""
    biggest = 1
    for g in range(g0, g1):
        biggest = max(biggest, gstart[g + 1] - gstart[g])
    val, chosen = np.empty(biggest), np.empty(biggest)  # by position
    row_at, pos_of = np.empty(biggest, dtype=np.int64), np.empty(biggest, dtype=np.int64)
    bval, bpos = np.empty(biggest), np.empty(biggest, dtype=np.int64)
    nk = 0
    for g in range(g0, g1):
        a, n = gstart[g], gstart[g + 1] - gstart[g]
        lo, hi = pstart[g - g0], pstart[g - g0 + 1]
        start, nbr, f = _neighbours(n, pa[lo:hi], pb[lo:hi], factor[lo:hi])
        width = max(16, int(np.sqrt(n)))
        n_blocks = (n + width - 1) // width
        for p in range(n):
            val[p], row_at[p], pos_of[p] = scores[a + p], p, p
        for b in range(n_blocks):
            _rescan(val, bval, bpos, b, width, n)
        for i in range(n):
            top = i // width
            for b in range(top + 1, n_blocks):
                if bval[b] > bval[top]:
                    top = b
            best = bpos[top]
            rb = row_at[best]
            chosen[i] = val[best]
            if best != i:  # the reference's swap of rows i and best
                r_i = row_at[i]
                row_at[i], row_at[best] = rb, r_i
                pos_of[rb], pos_of[r_i] = i, best
                val[best] = val[i]
                _rescan(val, bval, bpos, best // width, width, n)
            val[i] = -np.inf
            _rescan(val, bval, bpos, i // width, width, n)
            for e in range(start[rb], start[rb + 1]):
                p = pos_of[nbr[e]]
                if p > i:
                    val[p] = f[e] * val[p]
                    if bpos[p // width] == p:
                        _rescan(val, bval, bpos, p // width, width, n)
        for i in range(n):
            if chosen[i] > thresh:
                keep[nk] = a + row_at[i]
                nk += 1
    return nk

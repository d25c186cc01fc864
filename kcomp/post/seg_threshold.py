"""Per-class threshold x min-size x top-threshold tuning for segmentation probability maps (Understanding Clouds).

The predicted mask of one (image, class) map, the rule `tune_class` optimises and `postprocess` applies:
  1. binary = prob > threshold. On the uint8 scale (prob*255) this is `prob >= cutoff(threshold)` with
     cutoff(t) = the smallest k in 0..255 with k/255 > t, i.e. floor(255·t) + 1 in exact arithmetic (computed
     by comparing k/255.0 > t in float64, so t = 0.6 gives 154 because 153/255 == 0.6).
  2. 8-connected components (as cv2's default and `ink_threshold.remove_small`) with fewer than min_size
     pixels are removed (min_size 0 or 1 keeps everything).
  3. "top": when the raw map's maximum is below cutoff(top) (max/255 <= top) the whole mask is emptied. top = 0
     never changes anything (cutoff 1, and an all-zero map has an empty mask anyway).
Score: mean over images of Dice with empty/empty = 1 (`kcomp.metrics._segmentation.dice_empty_one`), summed in
image order. Ties go to the smallest threshold, then the smallest min_size, then the smallest top.

Min sizes are in pixels at the map resolution: Clouds' 10k-15k px at 1400x2100 is ~625-940 px at 350x525
(area / 16).

Why it is fast (a grid of T thresholds x M sizes x U tops costs about one pass over each map, not T*M*U
thresholdings and labellings): thresholds form a nested family, so one union-find pass per image that adds
pixels in decreasing order of their threshold level (numba) yields the components of every threshold. While
merging, each component's size and truth intersection move between M size bins; at each threshold level a
suffix sum over the bins gives, for every min size, the kept pixels and their intersection with the truth.
The top threshold depends only on the image maximum, and Dice for all (image, t, m, u) is then one vectorised
expression over a chunk of images. The kernel needs numba (imported and compiled on first use).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kcomp.errors import BadInput, BadUsage

__all__ = ["DEFAULT_MIN_SIZES", "DEFAULT_THRESHOLDS", "DEFAULT_TOPS", "ClassChoice", "mean_dice_after",
           "postprocess", "tune_class", "tune_naive", "uint8_cutoff"]

DEFAULT_THRESHOLDS = tuple(round(0.30 + 0.05 * i, 2) for i in range(11))  # 0.30 .. 0.80
DEFAULT_MIN_SIZES = (0, 100, 200, 300, 400, 600, 800, 1000, 1500, 2000)  # px at the map resolution
DEFAULT_TOPS = (0.0,)  # disabled; e.g. (0, 0.5, 0.6, 0.7, 0.8) to search it

_CHUNK = 128  # images whose (T, M, U) Dice block is materialised at once
_LEVELS = np.arange(256, dtype=np.float64) / 255.0


@dataclass
class ClassChoice:
    """Best post-processing of one class and the score it reached on the maps it was tuned on."""

    threshold: float
    min_size: int
    top: float
    score: float  # mean Dice of this class over the images (empty/empty = 1)
    curve: list[dict] = field(default_factory=list)  # per threshold: best score over (min_size, top) and its params


def uint8_cutoff(threshold: float) -> int:
    """Smallest uint8 value k with k/255 > threshold (256: none): `prob > threshold` is `prob_u8 >= cutoff`."""
    passes = np.flatnonzero(_LEVELS > threshold)
    return int(passes[0]) if len(passes) else 256


# ---------------------------------------------------------------------------------------------- validation

def _grid(thresholds: Sequence[float], min_sizes: Sequence[int],
          tops: Sequence[float]) -> tuple[list[float], list[int], list[float]]:
    """Sorted, de-duplicated candidate lists; BadUsage naming the first value out of range."""
    ts, ms, us = list(thresholds), list(min_sizes), list(tops)
    if not ts or not ms or not us:
        raise BadUsage("thresholds, min_sizes and tops each need at least one value")
    for t in ts:
        _check_threshold(t)
    for m in ms:
        _check_min_size(m)
    for u in us:
        _check_top(u)
    return sorted({float(t) for t in ts}), sorted({int(m) for m in ms}), sorted({float(u) for u in us})


def _check_threshold(t: float) -> None:
    if not (isinstance(t, int | float | np.number) and 0 < float(t) < 1):
        raise BadUsage(f"threshold {t}: must be a probability in (0, 1)")


def _check_min_size(m: int) -> None:
    try:
        ok = isinstance(m, int | float | np.number) and float(m) == int(m) and int(m) >= 0
    except (ValueError, OverflowError):  # nan, inf
        ok = False
    if not ok:
        raise BadUsage(f"min_size {m}: must be an integer >= 0 (pixels)")


def _check_top(u: float) -> None:
    if not (isinstance(u, int | float | np.number) and 0 <= float(u) < 1):
        raise BadUsage(f"top {u}: must be a probability in [0, 1) (0 disables it)")


def _as_uint8(prob: Any, where: str) -> np.ndarray:
    """A C-contiguous uint8 (H, W) map; float probabilities in [0, 1] become rint(p*255)."""
    p = np.asarray(prob)
    if p.ndim != 2:
        raise BadInput(f"{where}: expected a 2-D (H, W) map, got shape {p.shape}")
    if p.dtype == np.uint8:
        return np.ascontiguousarray(p)
    if p.dtype.kind != "f":
        raise BadInput(f"{where}: must be uint8 (probability*255) or float probabilities, got dtype {p.dtype}")
    p = p.astype(np.float64)
    if p.size and not (np.isfinite(p).all() and p.min() >= 0 and p.max() <= 1):
        raise BadInput(f"{where}: float probabilities must lie in [0, 1], found {np.nanmin(p):g}..{np.nanmax(p):g}")
    return np.rint(p * 255).astype(np.uint8)


def _as_bool(truth: Any, where: str) -> np.ndarray:
    t = np.asarray(truth)
    if t.dtype == np.bool_:
        return np.ascontiguousarray(t)
    if t.dtype.kind not in "iuf":
        raise BadInput(f"{where}: must be a boolean mask, got dtype {t.dtype}")
    return t != 0


def _pairs(probs: Any, truths: Any) -> tuple[Sequence[Any], Sequence[Any]]:
    """Indexable probs/truths of equal length and per-image shapes (cheap checks only; values are converted per
    image so float inputs never get a second full-size copy)."""
    def seq(a: Any, name: str) -> Sequence[Any]:
        if isinstance(a, np.ndarray):
            if a.ndim != 3:
                raise BadInput(f"{name} must be (N, H, W) or a list of (H, W) maps, got shape {a.shape}")
            return a
        if isinstance(a, list | tuple):
            return a
        raise BadInput(f"{name} must be an (N, H, W) array or a list of (H, W) maps, got {type(a).__name__}")

    ps, ts = seq(probs, "probs"), seq(truths, "truths")
    if isinstance(ps, np.ndarray) and isinstance(ts, np.ndarray) and ps.shape != ts.shape:
        raise BadInput(f"probs have shape {ps.shape} but truths have {ts.shape}")
    if len(ps) != len(ts):
        raise BadInput(f"{len(ps)} probability maps but {len(ts)} truth masks")
    if len(ps) == 0:
        raise BadInput("no images to tune on")
    if isinstance(ps, np.ndarray) and ps.dtype != np.uint8 and ps.dtype.kind != "f":
        raise BadInput(f"probs must be uint8 (probability*255) or float probabilities, got dtype {ps.dtype}")
    if not (isinstance(ps, np.ndarray) and isinstance(ts, np.ndarray)):
        for i, (p, t) in enumerate(zip(ps, ts, strict=True)):
            _check_shapes(np.shape(p), np.shape(t), i)
    return ps, ts


def _check_shapes(p: tuple[int, ...], t: tuple[int, ...], i: int) -> None:
    if p != t:
        raise BadInput(f"image {i}: prob has shape {p} but truth has {t}")


def _image(ps: Sequence[Any], ts: Sequence[Any], i: int) -> tuple[np.ndarray, np.ndarray]:
    """Image i as a C-contiguous uint8 map and boolean truth of the same shape (the kernel indexes both
    without bounds checks, so the shapes are checked here too)."""
    p, t = _as_uint8(ps[i], f"probs[{i}]"), _as_bool(ts[i], f"truths[{i}]")
    _check_shapes(p.shape, t.shape, i)
    return p, t


# ------------------------------------------------------------------------------------------ the exact rule

def postprocess(prob: np.ndarray, threshold: float, min_size: int, top: float = 0.0) -> np.ndarray:
    """uint8 (H, W) probability*255 map (or float in [0, 1]) -> the boolean mask `tune_class` scores: prob >
    threshold, 8-connected components under min_size px removed, all emptied when max(prob) <= top."""
    _check_threshold(threshold)
    _check_min_size(min_size)
    _check_top(top)
    p = _as_uint8(prob, "prob")
    if p.size == 0 or int(p.max()) < uint8_cutoff(top):
        return np.zeros(p.shape, dtype=bool)
    binary = p >= uint8_cutoff(threshold)
    if min_size > 1 and binary.any():
        from kcomp.post.ink_threshold import remove_small

        binary = remove_small(binary, int(min_size))
    return binary


def mean_dice_after(probs: Any, truths: Any, choice: ClassChoice | None = None, *, threshold: float | None = None,
                    min_size: int = 0, top: float = 0.0) -> float:
    """Mean `dice_empty_one` over images after `postprocess` with `choice` (or the explicit parameters), summed in
    image order like the tuners: the independent check of a tuned score."""
    from kcomp.metrics._segmentation import dice_empty_one

    if choice is not None:
        threshold, min_size, top = choice.threshold, choice.min_size, choice.top
    if threshold is None:
        raise BadUsage("mean_dice_after needs a ClassChoice or a threshold")
    ps, ts = _pairs(probs, truths)
    total = 0.0
    for i in range(len(ps)):
        p, t = _image(ps, ts, i)
        total += dice_empty_one(postprocess(p, threshold, min_size, top), t)
    return total / len(ps)


def _choose(scores: np.ndarray, ts: list[float], ms: list[int], us: list[float]) -> ClassChoice:
    """Best of a (T, M, U) score grid: first maximum in (threshold, min_size, top) order, plus the curve."""
    curve = []
    for j, t in enumerate(ts):
        k, v = np.unravel_index(int(np.argmax(scores[j])), scores[j].shape)
        curve.append({"threshold": t, "score": float(scores[j, k, v]), "min_size": ms[k], "top": us[v]})
    j, k, v = np.unravel_index(int(np.argmax(scores)), scores.shape)
    return ClassChoice(threshold=ts[j], min_size=ms[k], top=us[v], score=float(scores[j, k, v]), curve=curve)


def tune_naive(probs: Any, truths: Any, *, thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
               min_sizes: Sequence[int] = DEFAULT_MIN_SIZES, tops: Sequence[float] = DEFAULT_TOPS) -> ClassChoice:
    """Reference: for every (threshold, min_size, top) run `postprocess` + `dice_empty_one` on every image.
    Same grid normalisation, summation order and tie rule as `tune_class`; used by tests and the benchmark."""
    ts, ms, us = _grid(thresholds, min_sizes, tops)
    return _choose(_naive_scores(*_pairs(probs, truths), ts, ms, us), ts, ms, us)


def _naive_scores(ps: Sequence[Any], tr: Sequence[Any], ts: list[float], ms: list[int],
                  us: list[float]) -> np.ndarray:
    """Mean Dice of every candidate, (T, M, U), the slow way."""
    from kcomp.metrics._segmentation import dice_empty_one

    images = [_image(ps, tr, i) for i in range(len(ps))]
    scores = np.zeros((len(ts), len(ms), len(us)))
    for j, t in enumerate(ts):
        for k, m in enumerate(ms):
            for v, u in enumerate(us):
                total = 0.0
                for p, truth in images:
                    total += dice_empty_one(postprocess(p, t, m, u), truth)
                scores[j, k, v] = total / len(images)
    return scores


# ------------------------------------------------------------------------------------------- fast search

def _counts_py(prob, truth, level_of, n_levels, size_bin, n_bins, lev, order, parent, size, inter,
               out_p, out_i):  # pragma: no cover - compiled by numba, see _kernel
    """Kept pixels out_p[j, k] and their truth intersection out_i[j, k] of one (H, W) image for every cutoff
    level j and min-size index k; returns (max of prob, truth pixel count).

    level_of[v] = number of cutoffs <= v. `lev` is the (H+2)*(W+2) level map with a zero border (so neighbours
    need no bounds checks). Pixels are added level by level from the top (raster order inside a level, by
    counting sort) to a union-find forest over 8-neighbours (union by size, path halving). A pixel only unions
    with the first of each run of already-added neighbours around it: ring-consecutive neighbours are adjacent,
    hence already in one set. bin_p[b] / bin_i[b] hold the total size / intersection of components whose size s
    has size_bin[s] = b = number of min sizes <= s; a component survives min size k iff its bin > k, so after
    level L a suffix sum over the bins gives row L-1.
    """
    h, w = prob.shape
    w2 = w + 2
    starts = np.zeros(n_levels + 2, np.int64)
    mx = 0
    n_true = 0
    for r in range(h):
        base = (r + 1) * w2 + 1
        for c in range(w):
            v = prob[r, c]
            mx = max(mx, v)
            n_true += truth[r, c]
            lv = level_of[v]
            lev[base + c] = lv
            starts[lv + 1] += 1
    for lv in range(n_levels + 1):
        starts[lv + 1] += starts[lv]
    fill = starts.copy()
    for r in range(h):
        base = (r + 1) * w2 + 1
        for c in range(w):
            lv = lev[base + c]
            if lv > 0:
                x = base + c
                order[fill[lv]] = x
                fill[lv] += 1
                inter[x] = truth[r, c]
    ring = np.array([-w2 - 1, -w2, -w2 + 1, 1, w2 + 1, w2, w2 - 1, -1], np.int64)  # NW N NE E SE S SW W
    first_bit = np.zeros(256, np.int64)
    for v in range(1, 256):
        b = 0
        while not (v >> b) & 1:
            b += 1
        first_bit[v] = b
    o0 = -w2 - 1
    o1 = -w2
    o2 = -w2 + 1
    o3 = 1
    o4 = w2 + 1
    o5 = w2
    o6 = w2 - 1
    o7 = -1
    bin_p = np.zeros(n_bins + 1, np.int64)
    bin_i = np.zeros(n_bins + 1, np.int64)
    b1 = size_bin[1]
    for lv in range(n_levels, 0, -1):
        lm = lv - 1
        for q in range(starts[lv], starts[lv + 1]):
            x = order[q]
            ti = inter[x]
            # bit d set when ring neighbour d was added before x: prior ones (NW N NE W) at level >= lv,
            # later ones (E SE S SW) at level > lv
            m = ((lev[x + o0] > lm) | ((lev[x + o1] > lm) << 1) | ((lev[x + o2] > lm) << 2)
                 | ((lev[x + o3] > lv) << 3) | ((lev[x + o4] > lv) << 4) | ((lev[x + o5] > lv) << 5)
                 | ((lev[x + o6] > lv) << 6) | ((lev[x + o7] > lm) << 7))
            if m == 0:
                parent[x] = x
                size[x] = 1
                bin_p[b1] += 1
                bin_i[b1] += ti
                continue
            # ring-run starts: added and previous ring neighbour not added (all 8 added: just one)
            starts_m = m & ~(((m << 1) | (m >> 7)) & 255) if m != 255 else 1
            root = -1
            while starts_m:
                d = first_bit[starts_m]
                starts_m &= starts_m - 1
                y = x + ring[d]
                while parent[y] != y:
                    parent[y] = parent[parent[y]]
                    y = parent[y]
                if root < 0:  # x joins y's component
                    parent[x] = y
                    sb = size[y]
                    s = sb + 1
                    size[y] = s
                    ib = inter[y]
                    inter[y] = ib + ti
                    bb = size_bin[sb]
                    bn = size_bin[s]
                    if bb != bn:
                        bin_p[bb] -= sb
                        bin_i[bb] -= ib
                        bin_p[bn] += s
                        bin_i[bn] += ib + ti
                    else:
                        bin_p[bn] += 1
                        bin_i[bn] += ti
                    root = y
                    continue
                if y == root:
                    continue
                sa = size[root]
                sb = size[y]
                s = sa + sb
                ba = size_bin[sa]
                bb = size_bin[sb]
                bn = size_bin[s]
                ia = inter[root]
                ib = inter[y]
                if sa < sb:
                    root, y = y, root
                parent[y] = root
                size[root] = s
                inter[root] = ia + ib
                if ba != bn or bb != bn:
                    bin_p[ba] -= sa
                    bin_i[ba] -= ia
                    bin_p[bb] -= sb
                    bin_i[bb] -= ib
                    bin_p[bn] += s
                    bin_i[bn] += ia + ib
        sp = 0
        si = 0
        for k in range(n_bins - 1, -1, -1):
            sp += bin_p[k + 1]
            si += bin_i[k + 1]
            out_p[lv - 1, k] = sp
            out_i[lv - 1, k] = si
    return mx, n_true


@functools.cache
def _kernel():
    """numba-compiled `_counts_py`, compiled on first use so importing this module stays light; cached on disk
    when numba finds a writable cache directory."""
    import numba

    try:
        return numba.njit(cache=True, nogil=True)(_counts_py)
    except RuntimeError:  # no writable cache location (read-only install, no NUMBA_CACHE_DIR)
        return numba.njit(nogil=True)(_counts_py)


class _Scratch:
    """Work buffers for one map shape, reused across images: the union-find state needs no reset (a pixel is
    initialised when it is added) and the zero border of `lev` is never written."""

    def __init__(self, shape: tuple[int, int], min_sizes: list[int]) -> None:
        n = (shape[0] + 2) * (shape[1] + 2)
        self.lev = np.zeros(n, np.uint8)
        self.order = np.empty(n, np.int32)
        self.parent = np.empty(n, np.int32)
        self.size = np.empty(n, np.int32)
        self.inter = np.empty(n, np.int32)
        bins = np.searchsorted(np.asarray(min_sizes), np.arange(shape[0] * shape[1] + 2), side="right")
        self.size_bin = bins.astype(np.int16 if len(min_sizes) < 2**15 else np.int32)


def _chunk_dice(kept: np.ndarray, inter: np.ndarray, n_true: np.ndarray, mx: np.ndarray,
                top_cuts: np.ndarray) -> np.ndarray:
    """Dice (n, T, M, U) from kept/intersection counts (n, T, M): the same float operations as dice_empty_one."""
    alive = (mx[:, None] >= top_cuts[None, :])[:, None, None, :]  # (n, 1, 1, U)
    k = np.where(alive, kept[..., None], 0)
    i = np.where(alive, inter[..., None], 0)
    denom = k + n_true[:, None, None, None]
    return np.where(denom == 0, 1.0, 2.0 * i / np.maximum(denom, 1))


def tune_class(probs: Any, truths: Any, *, thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
               min_sizes: Sequence[int] = DEFAULT_MIN_SIZES, tops: Sequence[float] = DEFAULT_TOPS) -> ClassChoice:
    """Best (threshold, min_size, top) of one class by mean Dice (empty/empty = 1) over its images.

    probs: uint8 (N, H, W) probability*255 (or float in [0, 1], rint(p*255) per image), or a list of (H, W) maps;
    truths: boolean masks of the same shapes. Same result as `tune_naive` (same chosen parameters, same score
    bit for bit: per-image Dice uses the same float operations and is summed in image order), see the module
    docstring for the rule and the method. Memory: the maps themselves plus O(H*W) scratch and a
    (chunk, T, M, U) Dice block.
    """
    ts, ms, us = _grid(thresholds, min_sizes, tops)
    return _choose(_fast_scores(*_pairs(probs, truths), ts, ms, us), ts, ms, us)


def _fast_scores(ps: Sequence[Any], tr: Sequence[Any], ts: list[float], ms: list[int],
                 us: list[float]) -> np.ndarray:
    """Mean Dice of every candidate, (T, M, U): one union-find pass per image, then vectorised Dice."""
    total, _ = _fast_sums(ps, tr, ts, ms, us)
    return total / len(ps)


def _fast_sums(ps: Sequence[Any], tr: Sequence[Any], ts: list[float], ms: list[int], us: list[float],
               group: np.ndarray | None = None, n_groups: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Sum of Dice over the images of every candidate, (T, M, U), added in image order (as the reference sums),
    and the same sum per group of images, (G, T, M, U), when `group` gives each image's group."""
    from kcomp import console

    cuts_of_t = [uint8_cutoff(t) for t in ts]
    cuts = np.array(sorted(set(cuts_of_t)), dtype=np.int64)
    level_of = np.searchsorted(cuts, np.arange(256), side="right").astype(np.uint8)  # <= 255 cutoffs
    top_cuts = np.array([uint8_cutoff(u) for u in us], dtype=np.int64)
    n_cut, n_m = len(cuts), len(ms)
    kernel = _kernel()
    scratch: dict[tuple[int, ...], _Scratch] = {}
    total = np.zeros((n_cut, n_m, len(us)))
    by_group = np.zeros((n_groups, n_cut, n_m, len(us)))
    with console.progress(len(ps), "tune seg threshold", unit="img") as bar:
        for start in range(0, len(ps), _CHUNK):
            stop = min(start + _CHUNK, len(ps))
            kept = np.empty((stop - start, n_cut, n_m), np.int64)
            inter = np.empty_like(kept)
            mx = np.empty(stop - start, np.int64)
            n_true = np.empty(stop - start, np.int64)
            for i in range(start, stop):
                p, t = _image(ps, tr, i)
                if p.shape not in scratch:
                    scratch[p.shape] = _Scratch(p.shape, ms)
                s = scratch[p.shape]
                mx[i - start], n_true[i - start] = kernel(p, t, level_of, n_cut, s.size_bin, n_m, s.lev, s.order,
                                                          s.parent, s.size, s.inter, kept[i - start], inter[i - start])
            for i, row in enumerate(_chunk_dice(kept, inter, n_true, mx, top_cuts), start):
                total += row  # image by image, as the reference sums
                if group is not None:
                    by_group[group[i]] += row
            bar.advance(stop - start)
    index = np.searchsorted(cuts, cuts_of_t)  # threshold -> its cutoff level
    return total[index], by_group[:, index]

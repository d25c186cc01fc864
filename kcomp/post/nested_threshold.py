"""Nested tuning of seg and ink post-processing: the in-sample search of `seg_threshold` / `ink_threshold`, plus a
held-out score per fold for every post-processing option and the choice of `kcomp.post.heldout.select`.

Both reuse their fast paths once: seg keeps each image's Dice of every candidate (one union-find pass per image)
summed per fold, so any fold subset is a sum of fold sums; ink keeps each fragment's downscaled histograms (the
threshold of any fragment subset is one argmax over their sum) and labels each fragment at full resolution at most
twice, at the threshold of all folds and at the one tuned without its own fold.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from kcomp.errors import BadInput, BadUsage
from kcomp.metrics._segmentation import fbeta_from_counts
from kcomp.post import ink_threshold as ink
from kcomp.post import seg_threshold as seg
from kcomp.post.heldout import RULE_ONE_FOLD, Folds, fold_groups, select, summarise

__all__ = ["DEFAULT_MIN_SIZE_FRACTIONS", "InkChoice", "NestedChoice", "seg_summary", "tune_class_nested",
           "tune_ink_nested"]

# ink min sizes as fractions of the median mask area of the OOF rows; on a full 8181x6330 fragment (~3e7 mask px)
# 1e-5..3e-3 is ~300..100,000 px, the range competitors searched
DEFAULT_MIN_SIZE_FRACTIONS = (0.0, 1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3)


@dataclass
class NestedChoice(seg.ClassChoice):
    """`ClassChoice` chosen by the held-out rule; `score` stays the in-sample Dice of the chosen setting on every
    image, `heldout` is its held-out estimate (None with one fold)."""

    heldout: dict | None = None  # heldout.summarise of the chosen option: score, std, se, per-fold records
    options: list[dict] = field(default_factory=list)  # per (min_size, top): in-sample and held-out mean, se
    in_sample_choice: dict = field(default_factory=dict)  # what in-sample tuning alone chooses, and its held-out
    rule: str = RULE_ONE_FOLD
    warnings: list[str] = field(default_factory=list)


def _folds(folds: Folds | Sequence[int] | None, n: int) -> Folds:
    if not isinstance(folds, Folds):
        folds, _ = fold_groups(folds, n)
    if len(folds.group) != n:
        raise BadInput(f"{len(folds.group)} fold values for {n} rows")
    return folds


# ------------------------------------------------------------------------------------------------------- seg

def tune_class_nested(probs: Any, truths: Any, folds: Folds | Sequence[int] | None, *,
                      thresholds: Sequence[float] = seg.DEFAULT_THRESHOLDS,
                      min_sizes: Sequence[int] = seg.DEFAULT_MIN_SIZES,
                      tops: Sequence[float] = seg.DEFAULT_TOPS) -> NestedChoice:
    """`seg_threshold.tune_class` with a held-out estimate: each (min_size, top) option gets, per fold, the mean
    Dice of that fold's images at the threshold tuned on the other folds; `heldout.select` picks the option, whose
    threshold is then tuned on every image. Min size 0 and top 0 (the plain threshold) always join the grid."""
    ts, ms, us = seg._grid(thresholds, (*min_sizes, 0), (*tops, 0.0))
    ps, tr = seg._pairs(probs, truths)
    folds = _folds(folds, len(ps))
    total, by_fold = seg._fast_sums(ps, tr, ts, ms, us, folds.group, folds.k)
    n_t, n_u, n_opt = len(ts), len(us), len(ms) * len(us)
    flat = (total / len(ps)).reshape(n_t, n_opt)  # option o = (min size o // U, top o % U)
    in_sample = seg._choose(total / len(ps), ts, ms, us)
    in_opt = ms.index(in_sample.min_size) * n_u + us.index(in_sample.top)
    keys = [(us[o % n_u] > 0, ms[o // n_u], us[o % n_u]) for o in range(n_opt)]
    out = NestedChoice(0.0, 0, 0.0, 0.0, in_sample.curve)
    out.options = [{"min_size": ms[o // n_u], "top": us[o % n_u], "in_sample": float(flat[:, o].max()),
                    "heldout": None, "heldout_se": None} for o in range(n_opt)]
    chosen, in_heldout = min(range(n_opt), key=keys.__getitem__), None
    if folds.k > 1:
        held, t_idx = _heldout_dice(by_fold.reshape(folds.k, n_t, n_opt), folds)
        sel = select(held, keys, in_opt, lambda o: _describe(ms[o // n_u], us[o % n_u]), "Dice")
        chosen, in_heldout, out.rule, out.warnings = sel.index, float(sel.mean[in_opt]), sel.rule, sel.warnings
        out.heldout = summarise(held[:, chosen], folds, threshold=[ts[j] for j in t_idx[:, chosen]])
        for o, opt in enumerate(out.options):
            opt.update(heldout=float(sel.mean[o]), heldout_se=float(sel.se[o]))
    j = int(np.argmax(flat[:, chosen]))  # first maximum: the smallest threshold
    out.threshold, out.min_size, out.top = ts[j], ms[chosen // n_u], us[chosen % n_u]
    out.score = float(flat[j, chosen])
    out.in_sample_choice = {"threshold": in_sample.threshold, "min_size": in_sample.min_size,
                            "top": in_sample.top, "score": in_sample.score, "heldout": in_heldout}
    return out


def _heldout_dice(by_fold: np.ndarray, folds: Folds) -> tuple[np.ndarray, np.ndarray]:
    """Per fold g and option o (by_fold: (K, T, O) Dice sums): the mean Dice of g's images at the threshold that
    maximises the other folds' sum (first maximum: the smallest), and that threshold's index; both (K, O)."""
    k, _, n_opt = by_fold.shape
    held = np.empty((k, n_opt))
    t_idx = np.empty((k, n_opt), np.int64)
    cols = np.arange(n_opt)
    for g in range(k):
        t_idx[g] = np.argmax(by_fold[np.arange(k) != g].sum(axis=0), axis=0)
        held[g] = by_fold[g][t_idx[g], cols] / folds.rows[g]
    return held, t_idx


def _describe(min_size: int, top: float) -> str:
    return f"min size {min_size}" + (f", top {top:g}" if top else "")


def seg_summary(choices: dict[str, NestedChoice], folds: Folds, note: str = "") -> dict[str, Any]:
    """Thresholds-file fields of per-class choices: each class's values, the mean in-sample Dice over classes
    (`score`), the held-out Dice per fold as the mean over classes (`heldout`, None with one fold), and the
    warnings (`note` about the folds first)."""
    classes = {name: {k: v for k, v in asdict(c).items() if k != "warnings"} for name, c in choices.items()}
    heldout = None
    if folds.k > 1:
        per_fold = np.mean([[f["score"] for f in c.heldout["folds"]] for c in choices.values()], axis=0)
        heldout = summarise(per_fold, folds)
    return {"score": float(np.mean([c.score for c in choices.values()])), "heldout": heldout,
            "rule": next(iter(choices.values())).rule, "classes": classes,  # one rule: the classes share folds
            "warnings": [note] * bool(note) + [f"class {name}: {w}" for name, c in choices.items() for w in c.warnings]}


# ------------------------------------------------------------------------------------------------------- ink

@dataclass
class InkChoice(ink.InkThreshold):
    """`InkThreshold` chosen by the held-out rule; `score` is the in-sample full-resolution F-beta."""

    min_size_fraction: float = 0.0  # of `mask_area`; `min_size` = the pixels it rounds to
    mask_area: int = 0  # median mask pixels of the OOF rows, the scale of the min-size grid
    heldout: dict | None = None
    options: list[dict] = field(default_factory=list)  # per min size: in-sample and held-out mean, se
    in_sample_choice: dict = field(default_factory=dict)
    rule: str = RULE_ONE_FOLD
    warnings: list[str] = field(default_factory=list)

    def fields(self, note: str = "") -> dict[str, Any]:
        """The thresholds-file fields, with `note` (about the folds) first among the warnings."""
        return {**asdict(self), "warnings": [note] * bool(note) + self.warnings}


def _size_grid(fractions: Sequence[float], area: int) -> list[tuple[int, float]]:
    """(pixels, fraction) per distinct pixel count, smallest fraction first; 0 and 1 px both mean 'keep all'."""
    out: dict[int, float] = {}
    for f in sorted({float(f) for f in (*fractions, 0.0)}):
        if not 0.0 <= f < 1.0:
            raise BadUsage(f"min size fraction {f}: must be in [0, 1) (a fraction of the mask area)")
        px = round(f * area)
        out.setdefault(0 if px <= 1 else px, f)
    return list(out.items())


def tune_ink_nested(fragments: Sequence[ink.Fragment], folds: Folds | Sequence[int] | None, *,
                    downscale: int = 32, beta: float = 0.5,
                    fractions: Sequence[float] = DEFAULT_MIN_SIZE_FRACTIONS, steps: int = 256) -> InkChoice:
    """`ink_threshold.tune` with a held-out estimate and min sizes that scale with the mask area: each min size
    gets, per fold, the full-resolution F-beta of that fold's fragments at the threshold searched on the other
    folds' downscaled histograms; `heldout.select` picks it. The threshold is searched on every fragment."""
    ink._check_options(downscale, beta, steps)
    frags = ink._check_fragments(fragments)
    folds = _folds(folds, len(frags))
    thr = ink._thresholds(int(steps))
    pos, neg = ink._histograms(frags, int(downscale), thr)
    t_all, _, curve = ink._best(pos.sum(axis=0), neg.sum(axis=0), float(beta), thr)
    area = int(np.median([np.count_nonzero(m) for _, _, m in frags]))
    grid = _size_grid(fractions, area)
    sizes = [px for px, _ in grid]
    cache: dict[tuple[int, float], tuple] = {}

    def fbeta(rows: Sequence[int], t: float) -> np.ndarray:
        """F-beta per min size of the fragments `rows`, pooled, at threshold t."""
        for i in rows:
            if (i, t) not in cache:
                cache[i, t] = ink.size_counts(frags[i], t, sizes)
        tp, pred, n = (sum(cache[i, t][k] for i in rows) for k in range(3))
        return np.array([fbeta_from_counts(tp[j], pred[j] - tp[j], n - tp[j], beta) for j in range(len(sizes))])

    in_sample = fbeta(range(len(frags)), t_all)
    in_opt = int(np.argmax(in_sample))  # first maximum: the smallest size
    out = InkChoice(t_all, 0, float(in_sample[0]), int(downscale), curve, mask_area=area)
    out.options = [{"min_size": px, "min_size_fraction": f, "in_sample": float(in_sample[j]), "heldout": None,
                    "heldout_se": None} for j, (px, f) in enumerate(grid)]
    chosen, in_heldout = 0, None
    if folds.k > 1:
        held, t_fold = np.empty((folds.k, len(sizes))), []
        for g in range(folds.k):
            t_fold.append(ink._best(pos[folds.group != g].sum(axis=0), neg[folds.group != g].sum(axis=0),
                                    float(beta), thr)[0])
            held[g] = fbeta(np.flatnonzero(folds.group == g).tolist(), t_fold[-1])
        sel = select(held, sizes, in_opt, lambda j: f"min size {sizes[j]} px ({grid[j][1]:g} of the median mask "
                                                     "area)", f"F{beta:g}")
        chosen, in_heldout, out.rule, out.warnings = sel.index, float(sel.mean[in_opt]), sel.rule, sel.warnings
        out.heldout = summarise(held[:, chosen], folds, threshold=t_fold)
        for j, opt in enumerate(out.options):
            opt.update(heldout=float(sel.mean[j]), heldout_se=float(sel.se[j]))
    out.min_size, out.min_size_fraction, out.score = sizes[chosen], grid[chosen][1], float(in_sample[chosen])
    out.in_sample_choice = {"threshold": t_all, "min_size": sizes[in_opt], "min_size_fraction": grid[in_opt][1],
                            "score": float(in_sample[in_opt]), "heldout": in_heldout}
    return out

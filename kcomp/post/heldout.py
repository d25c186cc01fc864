"""Held-out (nested) estimates of tuned post-processing, and the rule that picks a setting which holds on unseen data.

Tuning a threshold and a minimum component size on the OOF maps scores the setting on the very rows that chose it,
and with a few folds (Vesuvius: 2-4 fragment groups) the chosen min size often fits those rows and loses ink on
new ones. So every candidate post-processing *option* (min size, and for seg the top threshold) gets a held-out
score per fold: its threshold is tuned on all folds but that one (the fold's rows never choose their own setting)
and it is scored on that fold. The tuners compute the per-row statistics once and sum them per fold subset, so the
nested search costs about one in-sample search (see `seg_threshold.tune_class_nested`, `ink_threshold.tune_nested`).

The rule (`RULE`): the option with the best mean held-out score over folds; then, among options whose mean is
within one standard error of it (SE = std over folds / sqrt(folds)), the least aggressive one (the one-standard-
error rule). The plain threshold (no post-processing) is always a candidate and the least aggressive, so the rule is
its own guard: an option is kept over it only when the plain threshold falls more than one SE below the best while
that option does not, i.e. when post-processing raises the held-out score. When in-sample tuning alone would choose
post-processing that lowers the held-out score against the plain threshold, `select` says so in its warnings. With
one fold there is nothing to hold out: the threshold is tuned in-sample and post-processing stays off
(`RULE_ONE_FOLD`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kcomp.errors import BadInput

__all__ = ["RULE", "RULE_ONE_FOLD", "Folds", "Selection", "fold_groups", "oof_folds", "select",
           "summarise"]

RULE = "heldout-1se"  # best held-out mean, then the least aggressive option within one SE of it
RULE_ONE_FOLD = "one-fold"  # nothing to hold out: threshold tuned in-sample, post-processing off


@dataclass
class Folds:
    """Rows grouped by their OOF `fold`: `group[i]` indexes `labels`; `rows[g]` counts the rows of group g."""

    group: np.ndarray
    labels: list[int]
    rows: list[int]

    @property
    def k(self) -> int:
        return len(self.labels)


def fold_groups(folds: Sequence[Any] | np.ndarray | None, n: int, where: str = "predictions") -> tuple[Folds, str]:
    """Folds of n OOF rows from their `fold` values (None: no column, one group) and a note when fewer than two
    folds leave nothing to hold out ("" otherwise)."""
    if folds is None:
        return Folds(np.zeros(n, np.int64), [0], [n]), (
            f"{where} has no fold column: no held-out estimate; threshold tuned in-sample, post-processing off")
    values = np.asarray(folds)
    if len(values) != n:
        raise BadInput(f"{where}: {len(values)} fold values for {n} rows")
    try:
        floats = values.astype(np.float64)
    except (TypeError, ValueError):
        floats = np.array([np.nan])
    if not (np.isfinite(floats).all() and (floats == np.round(floats)).all()):
        raise BadInput(f"{where}: fold column must hold integers, got {values[:3].tolist()}...")
    ints = floats.astype(np.int64)
    labels, group = np.unique(ints, return_inverse=True)
    rows = np.bincount(group, minlength=len(labels)).tolist()
    note = ""
    if len(labels) < 2:
        note = (f"{where} holds one fold ({int(labels[0])}): no held-out estimate; threshold tuned in-sample, "
                "post-processing off (predict every fold, `train --fold all`, to tune it)")
    return Folds(group.astype(np.int64), [int(v) for v in labels], rows), note


def oof_folds(preds: Any) -> tuple[Folds, str]:
    """The folds of a predictions file's rows (its `fold` column) and the note `fold_groups` gives."""
    df = preds.df
    return fold_groups(df["fold"].to_numpy() if "fold" in df.columns else None, len(df), preds.source)


def summarise(scores: np.ndarray, folds: Folds, **per_fold: Sequence[Any]) -> dict[str, Any]:
    """Mean, std (ddof 1) and standard error of per-fold held-out scores, plus one record per fold (its label,
    rows, score and any `per_fold` values such as the threshold that fold was scored at)."""
    s = np.asarray(scores, dtype=np.float64)
    std = float(s.std(ddof=1)) if len(s) > 1 else 0.0
    recs = [{"fold": folds.labels[g], "rows": folds.rows[g], "score": float(s[g]),
             **{k: v[g] for k, v in per_fold.items()}} for g in range(len(s))]
    return {"score": float(s.mean()), "std": std, "se": std / math.sqrt(len(s)), "folds": recs}


@dataclass
class Selection:
    """Which option the rule chose (`index`), the best held-out one, the in-sample one, and why."""

    index: int
    best: int
    in_sample: int
    rule: str
    mean: np.ndarray  # (O,) held-out mean per option
    se: np.ndarray  # (O,) its standard error
    warnings: list[str] = field(default_factory=list)


def select(heldout: np.ndarray, keys: Sequence[Any], in_sample: int, describe: Callable[[int], str],
           metric: str) -> Selection:
    """Apply `RULE` to held-out scores (K folds, O options). `keys[o]` orders options from the least aggressive
    (the smallest key is the plain threshold and must be there); `in_sample` is the option in-sample tuning alone
    chooses, reported when it scores below the plain threshold held-out."""
    h = np.asarray(heldout, dtype=np.float64)
    k = h.shape[0]
    mean = h.mean(axis=0)
    se = h.std(axis=0, ddof=1) / math.sqrt(k) if k > 1 else np.zeros(h.shape[1])
    order = sorted(range(h.shape[1]), key=lambda o: keys[o])
    plain = order[0]
    best = max(order, key=lambda o: mean[o])  # first maximum in order: ties go to the least aggressive
    chosen = next(o for o in order if mean[o] >= mean[best] - se[best])
    in_s = int(in_sample)
    warnings = []
    if in_s != plain and mean[in_s] < mean[plain]:
        warnings.append(f"in-sample tuning alone would choose {describe(in_s)}: held-out {metric} {mean[in_s]:.4f} "
                        f"< {mean[plain]:.4f} with no post-processing")
    return Selection(chosen, best, in_s, RULE, mean, se, warnings)

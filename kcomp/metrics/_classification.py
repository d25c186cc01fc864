"""Single-label classification metrics on class probabilities, computed in numpy so that the training loop
does not pay for importing sklearn; tests pin each one to its sklearn counterpart."""

from __future__ import annotations

import numpy as np

from kcomp.errors import BadInput
from kcomp.metrics import register_metric

LOG_LOSS_EPS = 1e-15


def _check(y_true: np.ndarray, y_score: np.ndarray, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Labels as int64 (N,), scores as float64 (N,) or (N, C); BadInput saying what is wrong otherwise."""
    t = np.asarray(y_true)
    s = np.asarray(y_score, dtype=np.float64)
    if t.ndim != 1:
        raise BadInput(f"{metric}: y_true must be 1-D class labels, got shape {t.shape}")
    if s.ndim not in (1, 2):
        raise BadInput(f"{metric}: y_score must be (N,) or (N, C), got shape {s.shape}")
    if len(t) != len(s):
        raise BadInput(f"{metric}: y_true has {len(t)} rows but y_score has {len(s)}")
    if len(t) == 0:
        raise BadInput(f"{metric}: no rows to score")
    if not np.isfinite(s).all():
        bad = int(np.flatnonzero(~np.isfinite(s).reshape(len(s), -1).all(axis=1))[0])
        raise BadInput(f"{metric}: y_score contains NaN or inf (first at row {bad})")
    if t.dtype.kind == "f":
        if not np.isfinite(t).all() or (t != np.round(t)).any():
            raise BadInput(f"{metric}: y_true must hold integer class labels")
    elif t.dtype.kind not in "iub":
        raise BadInput(f"{metric}: y_true must hold integer class labels, got dtype {t.dtype}")
    t = t.astype(np.int64)
    n_classes = s.shape[1] if s.ndim == 2 else 2
    if t.min() < 0 or t.max() >= n_classes:
        raise BadInput(f"{metric}: y_true labels must lie in [0, {n_classes - 1}], found {t.min()}..{t.max()}")
    return t, s


def _as_2d(s: np.ndarray) -> np.ndarray:
    """A 1-D score is the positive-class probability of a binary problem."""
    return np.stack([1.0 - s, s], axis=1) if s.ndim == 1 else s


@register_metric("accuracy", higher_is_better=True)
def accuracy(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """Fraction of rows whose argmax class equals the label."""
    t, s = _check(y_true, y_score, "accuracy")
    return float(np.mean(_as_2d(s).argmax(axis=1) == t))


@register_metric("log_loss", higher_is_better=False)
def log_loss(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """Mean negative log probability of the true class (clipped at 1e-15); lower is better."""
    t, s = _check(y_true, y_score, "log_loss")
    p = np.clip(_as_2d(s)[np.arange(len(t)), t], LOG_LOSS_EPS, 1.0 - LOG_LOSS_EPS)
    return float(-np.mean(np.log(p)))


@register_metric("macro_f1", higher_is_better=True)
def macro_f1(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """Unweighted mean of per-class F1 over classes present in labels or argmax predictions."""
    t, s = _check(y_true, y_score, "macro_f1")
    pred = _as_2d(s).argmax(axis=1)
    n = max(int(t.max()), int(pred.max())) + 1
    tp = np.bincount(t[pred == t], minlength=n).astype(np.float64)
    support = np.bincount(t, minlength=n)
    predicted = np.bincount(pred, minlength=n)
    present = (support + predicted) > 0  # sklearn's default label set: union of y_true and y_pred
    f1 = 2 * tp[present] / (support[present] + predicted[present])
    return float(f1.mean())


def _binary_auc(positive: np.ndarray, score: np.ndarray) -> float:
    """Mann-Whitney form of the ROC AUC; average ranks make ties count one half, as the trapezoid rule does."""
    from scipy.stats import rankdata

    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    ranks = rankdata(score)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


@register_metric("roc_auc", higher_is_better=True)
def roc_auc(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """ROC AUC: binary on (N,) or (N, 2) scores, else macro one-vs-rest over classes."""
    t, s = _check(y_true, y_score, "roc_auc")
    cols = [s] if s.ndim == 1 else ([s[:, 1]] if s.shape[1] == 2 else [s[:, k] for k in range(s.shape[1])])
    classes = [1] if len(cols) == 1 else list(range(len(cols)))
    aucs = []
    for k, col in zip(classes, cols):
        positive = t == k
        if positive.all() or not positive.any():
            what = "every" if positive.all() else "no"
            raise BadInput(f"roc_auc: undefined because {what} row has label {k}")
        aucs.append(_binary_auc(positive, col))
    return float(np.mean(aucs))

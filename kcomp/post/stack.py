"""Level-2 stacking: learn how to combine several models' out-of-fold class probabilities.

Cassava-style top solutions fed base models' OOF probabilities to a logistic regression or a small MLP, which
can learn that model A is trustworthy on some classes and model B on others, something a fixed blend cannot.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from kcomp.errors import BadInput, BadUsage
from kcomp.options import SEED, Checked, Choice, Int, Text, check_values, lazy, option, specs

MODELS = ("logreg", "mlp", "gbm")


@dataclass(frozen=True)
class StackOptions(Checked):
    """What `kcomp stack` was asked, checked on creation (each field with its Spec, as `TrainOptions`)."""

    model: str = option(Choice(lazy("kcomp.post.stack", "MODELS"), what="stacking model"), "logreg")
    folds: int = option(Int(2), 5)  # CV folds of the level-2 score
    seed: int = option(SEED, 42)
    oof_output: str | None = option(Text())  # where the level-2 OOF predictions go, if anywhere


STACK = specs(StackOptions)  # what `kcomp stack` accepts; stack() holds its callers to the same values
LOG_EPS = 1e-7


@dataclass
class StackResult:
    oof: np.ndarray  # (N, C) cross-validated level-2 probabilities for the OOF rows
    test: np.ndarray  # (M, C) level-2 probabilities for the test rows (model refit on all OOF rows)
    cv_score: float  # accuracy of `oof`
    base_scores: list[float]  # accuracy of each input model's OOF


def _as_2d(a: np.ndarray, what: str) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 1:
        a = a[:, None]  # a binary model's positive-class probability
    if a.ndim != 2:
        raise BadInput(f"{what} must be (N,) or (N, C) probabilities, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise BadInput(f"{what} contains NaN or inf")
    return a


def _labels(y: np.ndarray, n_rows: int, n_splits: int) -> tuple[np.ndarray, int]:
    y = np.asarray(y)
    if y.ndim != 1:
        raise BadInput(f"y must be 1-D class labels, got shape {y.shape}")
    if len(y) != n_rows:
        raise BadInput(f"y has {len(y)} rows but the OOF arrays have {n_rows}")
    if y.dtype.kind == "f" and np.isfinite(y).all() and (y == np.round(y)).all():
        y = y.astype(np.int64)
    if len(y) == 0:
        raise BadInput("no OOF rows to stack")
    if y.dtype.kind not in "biu" or y.min() < 0:
        raise BadInput("y must hold class labels 0..C-1")
    y = y.astype(np.int64)
    n_classes = int(y.max()) + 1
    counts = np.bincount(y, minlength=n_classes)
    for k, c in enumerate(counts):
        if c < n_splits:
            raise BadInput(f"class {k} has {c} rows in y, fewer than n_splits={n_splits}")
    return y, n_classes


def _base_accuracy(p: np.ndarray, y: np.ndarray) -> float:
    pred = (p[:, 0] >= 0.5).astype(np.int64) if p.shape[1] == 1 else p.argmax(axis=1)
    return float(np.mean(pred == y))


def _features(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """Log probabilities: a linear model on them is a learned weighted geometric blend."""
    return np.hstack([np.log(np.clip(a, LOG_EPS, 1.0)) for a in arrays])


def _make_model(model: str, seed: int, C: float):
    if model == "logreg":
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(C=C, max_iter=1000)
    if model == "mlp":
        from sklearn.neural_network import MLPClassifier

        return MLPClassifier(hidden_layer_sizes=(64,), early_stopping=False, max_iter=500, random_state=seed,
                             alpha=1e-3)
    from sklearn.ensemble import HistGradientBoostingClassifier

    return HistGradientBoostingClassifier(random_state=seed)


def _fit_predict(clf, x_fit: np.ndarray, y_fit: np.ndarray, x_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Probabilities for all n_classes columns, zero for a class the fit rows did not contain."""
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        # An unconverged level-2 fit on a few thousand rows is still a usable blend; the CV score says how usable.
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(x_fit, y_fit)
    out = np.zeros((len(x_pred), n_classes))
    out[:, clf.classes_.astype(np.int64)] = clf.predict_proba(x_pred)
    return out


def stack(
    oof: Sequence[np.ndarray],
    y: np.ndarray,
    test: Sequence[np.ndarray],
    *,
    model: str = "logreg",
    n_splits: int = 5,
    seed: int = 42,
    C: float = 1.0,
) -> StackResult:
    """Fit a level-2 `model` on the base models' OOF probabilities; CV it for an honest score, refit for test.

    `oof[i]` (N, C_i) and `test[i]` (M, C_i) come from the same base model; `y` holds labels 0..C-1.
    `C` is the logistic regression's inverse regularisation strength (ignored by the other models).
    """
    from sklearn.base import clone
    from sklearn.model_selection import StratifiedKFold

    check_values(STACK, model=model, folds=n_splits, seed=seed)
    if len(oof) != len(test):
        raise BadUsage(f"got {len(oof)} OOF arrays but {len(test)} test arrays; give one of each per model")
    if len(oof) == 0:
        raise BadUsage("nothing to stack: no OOF arrays given")

    oofs = [_as_2d(a, f"oof[{i}]") for i, a in enumerate(oof)]
    tests = [_as_2d(a, f"test[{i}]") for i, a in enumerate(test)]
    for i, a in enumerate(oofs[1:], start=1):
        if len(a) != len(oofs[0]):
            raise BadInput(f"oof[{i}] has {len(a)} rows but oof[0] has {len(oofs[0])}")
    for i, a in enumerate(tests[1:], start=1):
        if len(a) != len(tests[0]):
            raise BadInput(f"test[{i}] has {len(a)} rows but test[0] has {len(tests[0])}")
    for i, (a, t) in enumerate(zip(oofs, tests)):
        if a.shape[1] != t.shape[1]:
            raise BadInput(f"oof[{i}] has {a.shape[1]} columns but test[{i}] has {t.shape[1]}")
    y, n_classes = _labels(y, len(oofs[0]), n_splits)

    x, x_test = _features(oofs), _features(tests)
    proto = _make_model(model, seed, C)
    level2 = np.zeros((len(x), n_classes))
    folds = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    for fit_idx, val_idx in folds.split(x, y):
        level2[val_idx] = _fit_predict(clone(proto), x[fit_idx], y[fit_idx], x[val_idx], n_classes)
    test_pred = (
        _fit_predict(clone(proto), x, y, x_test, n_classes) if len(x_test) else np.zeros((0, n_classes))
    )
    return StackResult(
        oof=level2,
        test=test_pred,
        cv_score=float(np.mean(level2.argmax(axis=1) == y)),
        base_scores=[_base_accuracy(a, y) for a in oofs],
    )

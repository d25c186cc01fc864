from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from kcomp.errors import BadInput, BadUsage
from kcomp.metrics import METRICS, Metric, get_metric, list_metrics, register_metric


def _data(seed: int, n: int = 200, c: int = 4) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    p = rng.dirichlet(np.ones(c), n)
    p[np.arange(n), y] += rng.uniform(0, 0.8, n)  # better than chance, so the metrics are not all ~0.5
    return y, p / p.sum(axis=1, keepdims=True)


def test_registry_lists_classification_metrics() -> None:
    assert {"accuracy", "log_loss", "macro_f1", "roc_auc"} <= set(list_metrics())
    m = get_metric("log_loss")
    assert isinstance(m, Metric) and m.name == "log_loss" and not m.higher_is_better
    assert get_metric("accuracy").higher_is_better
    assert "log probability" in METRICS.describe()


def test_unknown_metric_is_bad_usage_listing_choices() -> None:
    with pytest.raises(BadUsage, match="accuracy"):
        get_metric("nope")


def test_register_metric_wraps_and_rejects_duplicates(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(METRICS, "_entries", dict(METRICS._entries))  # keep the global registry clean

    @register_metric("test_only_const", higher_is_better=False)
    def const(y_true: np.ndarray, y_score: np.ndarray) -> float:
        """Always one."""
        return 1.0

    m = get_metric("test_only_const")
    assert m.fn is const and m(np.zeros(1), np.zeros(1)) == 1.0
    assert m.is_better(0.5, 1.0) and not m.is_better(2.0, 1.0) and m.is_better(9.0, None)
    with pytest.raises(ValueError, match="twice"):
        register_metric("test_only_const", higher_is_better=True)(const)
    assert get_metric("test_only_const").higher_is_better is False


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("c", [2, 3, 5])
def test_matches_sklearn(seed: int, c: int) -> None:
    y, p = _data(seed, c=c)
    assert get_metric("accuracy")(y, p) == pytest.approx(skm.accuracy_score(y, p.argmax(1)))
    assert get_metric("log_loss")(y, p) == pytest.approx(skm.log_loss(y, p, labels=list(range(c))))
    assert get_metric("macro_f1")(y, p) == pytest.approx(skm.f1_score(y, p.argmax(1), average="macro"))
    expected_auc = skm.roc_auc_score(y, p[:, 1]) if c == 2 else skm.roc_auc_score(y, p, multi_class="ovr")
    assert get_metric("roc_auc")(y, p) == pytest.approx(expected_auc)


def test_roc_auc_binary_1d_and_ties() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 300)
    s = np.round(rng.uniform(size=300) + 0.3 * y, 1)  # coarse rounding makes many ties
    assert get_metric("roc_auc")(y, s) == pytest.approx(skm.roc_auc_score(y, s))
    assert get_metric("roc_auc")(y, np.stack([1 - s, s], 1)) == pytest.approx(skm.roc_auc_score(y, s))


def test_macro_f1_with_class_never_predicted() -> None:
    y = np.array([0, 1, 2, 2, 1, 0])
    p = np.eye(3)[[0, 1, 1, 1, 1, 0]]  # class 2 never predicted
    expected = skm.f1_score(y, p.argmax(1), average="macro", zero_division=0)
    assert get_metric("macro_f1")(y, p) == pytest.approx(expected)


def test_log_loss_clips_zero_probability() -> None:
    y = np.array([0, 1])
    p = np.array([[1.0, 0.0], [1.0, 0.0]])
    assert get_metric("log_loss")(y, p) == pytest.approx(-np.log(1e-15) / 2)


@pytest.mark.parametrize("name", ["accuracy", "log_loss", "macro_f1", "roc_auc"])
def test_bad_inputs(name: str) -> None:
    y, p = _data(0, n=20, c=3)
    fn = get_metric(name)
    with pytest.raises(BadInput, match="20 rows but y_score has 19"):
        fn(y, p[:19])
    bad = p.copy()
    bad[7, 1] = np.nan
    with pytest.raises(BadInput, match="NaN or inf.*row 7"):
        fn(y, bad)
    bad[7, 1] = np.inf
    with pytest.raises(BadInput, match="NaN or inf"):
        fn(y, bad)
    with pytest.raises(BadInput, match=r"labels must lie in \[0, 2\]"):
        fn(np.where(y == 0, 3, y), p)


def test_roc_auc_missing_class_is_bad_input() -> None:
    y = np.array([0, 1, 0, 1])
    p = np.full((4, 3), 1 / 3)
    with pytest.raises(BadInput, match="no row has label 2"):
        get_metric("roc_auc")(y, p)

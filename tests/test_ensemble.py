from __future__ import annotations

import numpy as np
import pytest

from kcomp.errors import BadInput, BadUsage
from kcomp.post.ensemble import METHODS, combine


def _probs(seed: int, n: int = 50, c: int = 5) -> np.ndarray:
    return np.random.default_rng(seed).dirichlet(np.ones(c), n)


def test_mean_of_identical_is_identity() -> None:
    p = _probs(0)
    out = combine([p, p, p])
    assert out.dtype == np.float32 and out.shape == p.shape
    np.testing.assert_allclose(out, p, rtol=1e-6)


def test_weighted_mean() -> None:
    a, b = _probs(0), _probs(1)
    np.testing.assert_allclose(combine([a, b], weights=[3, 1]), 0.75 * a + 0.25 * b, rtol=1e-6)


@pytest.mark.parametrize("method", ["mean", "geometric", "rank"])
def test_weight_one_zero_returns_first(method: str) -> None:
    a, b = _probs(0), _probs(1)
    expected = combine([a], method=method)
    np.testing.assert_allclose(combine([a, b], method=method, weights=[1, 0]), expected, rtol=1e-6)
    if method != "rank":
        np.testing.assert_allclose(expected, a, rtol=1e-6)


def test_geometric_of_same_is_same() -> None:
    p = _probs(2)
    np.testing.assert_allclose(combine([p, p], method="geometric"), p, rtol=1e-5)


def test_geometric_formula_and_normalisation() -> None:
    a, b = _probs(0), _probs(1)
    g = np.sqrt(a * b)
    out = combine([a, b], method="geometric")
    np.testing.assert_allclose(out, g / g.sum(1, keepdims=True), rtol=1e-5)
    np.testing.assert_allclose(out.sum(1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(combine([a, b], method="geometric", normalize=False), g, rtol=1e-5)


def test_power_is_unrooted_mean_of_powers() -> None:
    a, b = _probs(0), _probs(1)
    raw = (a**2 + b**2) / 2
    np.testing.assert_allclose(combine([a, b], method="power", normalize=False), raw, rtol=1e-5)
    np.testing.assert_allclose(combine([a, b], method="power"), raw / raw.sum(1, keepdims=True), rtol=1e-5)


def test_power_one_equals_mean() -> None:
    a, b = _probs(0), _probs(1)
    np.testing.assert_allclose(
        combine([a, b], method="power", power=1.0, weights=[2, 1]), combine([a, b], weights=[2, 1]), rtol=1e-6
    )


def test_rank_in_unit_interval_and_monotone_per_column() -> None:
    a = _probs(3, n=40)
    out = combine([a], method="rank")
    assert out.min() == 0.0 and out.max() == 1.0
    for j in range(a.shape[1]):
        order = np.argsort(a[:, j])
        assert (np.diff(out[order, j]) > 0).all()  # continuous data: no ties, strictly increasing
    both = combine([a, _probs(4, n=40)], method="rank")
    assert both.min() >= 0.0 and both.max() <= 1.0
    assert not np.allclose(both.sum(1), 1.0)  # ranks are never renormalised into distributions


def test_rank_average_ties() -> None:
    out = combine([np.array([0.1, 0.5, 0.5, 0.9])], method="rank")
    np.testing.assert_allclose(out, [0.0, 0.5, 0.5, 1.0])


def test_multilabel_rows_are_not_renormalised() -> None:
    rng = np.random.default_rng(5)
    a, b = rng.uniform(size=(30, 4)), rng.uniform(size=(30, 4))
    np.testing.assert_allclose(combine([a, b]), (a + b) / 2, rtol=1e-6)


def test_elementwise_on_maps_and_vectors() -> None:
    rng = np.random.default_rng(6)
    a, b = rng.uniform(size=(3, 8, 8)), rng.uniform(size=(3, 8, 8))
    np.testing.assert_allclose(combine([a, b], method="geometric"), np.sqrt(a * b), rtol=1e-5)
    r = combine([a, b], method="rank")
    expected = (np.argsort(np.argsort(a, 0), 0) + np.argsort(np.argsort(b, 0), 0)) / 2 / 2  # per-pixel ranks
    np.testing.assert_allclose(r, expected, rtol=1e-6)
    v = rng.uniform(size=10)
    np.testing.assert_allclose(combine([v, v], method="power", power=3), v**3, rtol=1e-5)


def test_shape_mismatch_names_index_and_shapes() -> None:
    a = _probs(0)
    with pytest.raises(BadInput, match=r"array 2 has shape \(50, 4\) but array 0 has shape \(50, 5\)"):
        combine([a, a, a[:, :4]])


def test_nan_and_inf_rejected() -> None:
    a = _probs(0)
    b = a.copy()
    b[3, 2] = np.nan
    with pytest.raises(BadInput, match="array 1 contains NaN or inf"):
        combine([a, b])
    b[3, 2] = np.inf
    with pytest.raises(BadInput, match="array 1 contains NaN or inf"):
        combine([a, b], method="rank")


@pytest.mark.parametrize(
    ("weights", "match"),
    [([1.0], "1 weights for 2 arrays"), ([1.0, -0.5], "non-negative"), ([0, 0], "all zero"), ([1, np.nan], "finite")],
)
def test_bad_weights(weights: list[float], match: str) -> None:
    with pytest.raises(BadUsage, match=match):
        combine([_probs(0), _probs(1)], weights=weights)


def test_bad_usage() -> None:
    with pytest.raises(BadUsage, match="choose one of: " + ", ".join(METHODS)):
        combine([_probs(0)], method="median")
    with pytest.raises(BadUsage, match="no arrays"):
        combine([])
    with pytest.raises(BadUsage, match="power must be a positive"):
        combine([_probs(0)], method="power", power=0)
    with pytest.raises(BadInput, match="negative values"):
        combine([-_probs(0)], method="power")

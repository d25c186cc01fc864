from __future__ import annotations

import numpy as np
import pytest

from kcomp.errors import BadInput, BadUsage
from kcomp.post.stack import MODELS, stack


def _problem(seed: int = 0, n: int = 400, m: int = 100, c: int = 4):
    """Model A is reliable on classes 0-1 and noise on 2-3; model B the other way round."""
    rng = np.random.default_rng(seed)

    def probs(y: np.ndarray, good: set[int]) -> np.ndarray:
        logits = rng.normal(0, 1.0, (len(y), c))
        strength = np.where(np.isin(y, list(good)), 4.0, 0.0)
        logits[np.arange(len(y)), y] += strength
        # the bad model confuses its weak classes with its strong ones, so its argmax is often wrong there
        weak = ~np.isin(y, list(good))
        logits[weak, min(good)] += 2.0
        e = np.exp(logits - logits.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    y = rng.permutation(np.arange(n) % c)
    y_test = np.arange(m) % c
    a, b = probs(y, {0, 1}), probs(y, {2, 3})
    return [a, b], y, [probs(y_test, {0, 1}), probs(y_test, {2, 3})], y_test


@pytest.mark.parametrize("model", MODELS)
def test_stacking_beats_each_base_model(model: str) -> None:
    oof, y, test, y_test = _problem()
    res = stack(oof, y, test, model=model, n_splits=4)
    assert res.oof.shape == (400, 4) and res.test.shape == (100, 4)
    np.testing.assert_allclose(res.oof.sum(1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(res.test.sum(1), 1.0, rtol=1e-6)
    assert len(res.base_scores) == 2 and max(res.base_scores) < 0.75
    assert res.cv_score == pytest.approx(np.mean(res.oof.argmax(1) == y))
    assert res.cv_score > max(res.base_scores) + 0.15
    assert np.mean(res.test.argmax(1) == y_test) > max(res.base_scores) + 0.15


def test_deterministic_by_seed() -> None:
    oof, y, test, _ = _problem(n=120, m=20)
    r1 = stack(oof, y, test, model="mlp", n_splits=3, seed=7)
    r2 = stack(oof, y, test, model="mlp", n_splits=3, seed=7)
    np.testing.assert_array_equal(r1.oof, r2.oof)
    np.testing.assert_array_equal(r1.test, r2.test)
    r3 = stack(oof, y, test, model="mlp", n_splits=3, seed=8)
    assert not np.array_equal(r1.oof, r3.oof)


def test_different_widths_per_model_and_binary_vector() -> None:
    rng = np.random.default_rng(1)
    y = np.arange(60) % 2
    p1 = np.clip(y + rng.normal(0, 0.4, 60), 0, 1)  # (N,) positive-class probability
    p2 = rng.dirichlet(np.ones(3), 60)  # a model with a different class set is still a feature source
    res = stack([p1, p2], y, [p1[:10], p2[:10]], n_splits=3)
    assert res.oof.shape == (60, 2) and res.test.shape == (10, 2)
    assert res.base_scores[0] == pytest.approx(np.mean((p1 >= 0.5) == y))


def test_errors() -> None:
    oof, y, test, _ = _problem(n=40, m=10)
    with pytest.raises(BadUsage, match="2 OOF arrays but 1 test"):
        stack(oof, y, test[:1])
    with pytest.raises(BadUsage, match="choose one of"):
        stack(oof, y, test, model="xgb")
    with pytest.raises(BadInput, match="oof\\[1\\] has 39 rows but oof\\[0\\] has 40"):
        stack([oof[0], oof[1][:39]], y, test)
    with pytest.raises(BadInput, match="y has 39 rows"):
        stack(oof, y[:39], test)
    with pytest.raises(BadInput, match="oof\\[1\\] has 4 columns but test\\[1\\] has 3"):
        stack(oof, y, [test[0], test[1][:, :3]])
    with pytest.raises(BadInput, match="test\\[1\\] has 9 rows"):
        stack(oof, y, [test[0], test[1][:9]])
    bad = oof[0].copy()
    bad[0, 0] = np.nan
    with pytest.raises(BadInput, match="oof\\[0\\] contains NaN"):
        stack([bad, oof[1]], y, test)
    y_rare = y.copy()
    y_rare[y_rare == 3] = 0
    y_rare[:2] = 3
    with pytest.raises(BadInput, match="class 3 has 2 rows in y, fewer than n_splits=5"):
        stack(oof, y_rare, test)
    with pytest.raises(BadInput, match="class 2 has 0 rows"):
        stack(oof, np.where(y == 2, 1, y), test)

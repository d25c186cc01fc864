from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from kcomp.errors import BadInput
from kcomp.metrics import get_metric
from kcomp.metrics._segmentation import dice_empty_one, fbeta_pixels, mean_dice


def _maps(seed: int, shape: tuple[int, ...] = (40, 50)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    truth = rng.random(shape) < 0.3
    pred = np.where(rng.random(shape) < 0.7, truth, rng.random(shape) < 0.3)
    mask = rng.random(shape) < 0.6
    return pred, truth, mask


@pytest.mark.parametrize("seed", range(8))
def test_fbeta_pixels_matches_sklearn_on_masked_pixels(seed: int) -> None:
    pred, truth, mask = _maps(seed)
    want = skm.fbeta_score(truth[mask], pred[mask], beta=0.5)
    assert fbeta_pixels(pred, truth, mask) == pytest.approx(want, abs=1e-12)
    assert fbeta_pixels(pred, truth) == pytest.approx(skm.fbeta_score(truth.ravel(), pred.ravel(), beta=0.5))
    assert fbeta_pixels(pred, truth, mask, beta=2.0) == pytest.approx(
        skm.fbeta_score(truth[mask], pred[mask], beta=2.0), abs=1e-12)


def test_fbeta_pixels_conventions() -> None:
    z = np.zeros((4, 4), dtype=bool)
    some = z.copy()
    some[1, 1] = True
    assert fbeta_pixels(z, z) == 1.0  # nothing to find, nothing predicted
    assert fbeta_pixels(z, some) == 0.0  # missed everything
    assert fbeta_pixels(some, z) == 0.0  # only false positives
    assert fbeta_pixels(some, some) == 1.0
    outside = ~some
    assert fbeta_pixels(some, z, outside) == 1.0  # the false positive lies outside the mask
    assert fbeta_pixels(some.astype(np.uint8), some.astype(np.float32)) == 1.0


def test_fbeta_pixels_shape_mismatch_is_bad_input() -> None:
    with pytest.raises(BadInput, match="shape"):
        fbeta_pixels(np.zeros((3, 3)), np.zeros((3, 4)))
    with pytest.raises(BadInput, match="mask"):
        fbeta_pixels(np.zeros((3, 3)), np.zeros((3, 3)), np.zeros((2, 3)))


@pytest.mark.parametrize("seed", range(5))
def test_f05_metric_thresholds_and_ignores_label_2(seed: int) -> None:
    rng = np.random.default_rng(seed)
    truth = (rng.random((30, 40)) < 0.3).astype(np.int64)
    prob = np.clip(truth * 0.4 + rng.random(truth.shape) * 0.7, 0, 1)
    mask = rng.random(truth.shape) < 0.7
    y_true = np.where(mask, truth, 2)
    want = skm.fbeta_score(truth[mask], prob[mask] >= 0.5, beta=0.5)
    m = get_metric("f05")
    assert m.higher_is_better
    assert m(y_true, prob) == pytest.approx(want, abs=1e-12)
    y_true255 = np.where(mask, truth, 255).astype(np.uint8)  # any value > 1 means ignore
    as_u8 = np.round(prob * 255).astype(np.uint8)
    want_u8 = skm.fbeta_score(truth[mask], as_u8[mask] >= 128, beta=0.5)
    assert m(y_true255, as_u8) == pytest.approx(want_u8, abs=1e-12)


def test_f05_metric_rejects_bad_scores() -> None:
    m = get_metric("f05")
    with pytest.raises(BadInput, match=r"\[0, 1\]"):
        m(np.zeros((2, 2), dtype=int), np.full((2, 2), 3.0))
    with pytest.raises(BadInput, match="NaN"):
        m(np.zeros((2, 2), dtype=int), np.full((2, 2), np.nan))
    with pytest.raises(BadInput, match="shape"):
        m(np.zeros((2, 2), dtype=int), np.zeros((2, 3)))
    with pytest.raises(BadInput, match="negative"):
        m(-np.ones((2, 2), dtype=int), np.zeros((2, 2)))


def _dice_reference(preds: np.ndarray, truths: np.ndarray) -> float:
    scores = []
    for i in range(preds.shape[0]):
        for c in range(preds.shape[1]):
            a, b = preds[i, c].astype(bool), truths[i, c].astype(bool)
            n = int(a.sum()) + int(b.sum())
            scores.append(1.0 if n == 0 else 2.0 * int((a & b).sum()) / n)
    return float(np.mean(scores))


def test_dice_empty_one_hand_checked() -> None:
    z = np.zeros((3, 3), dtype=bool)
    a = z.copy()
    a[0, :] = True  # 3 px
    b = z.copy()
    b[0, :2] = True
    b[2, 2] = True  # 3 px, 2 shared
    assert dice_empty_one(z, z) == 1.0
    assert dice_empty_one(z, a) == 0.0
    assert dice_empty_one(a, z) == 0.0
    assert dice_empty_one(a, b) == pytest.approx(2 * 2 / 6)
    batch_p = np.stack([np.stack([z, a]), np.stack([a, a])])
    batch_t = np.stack([np.stack([z, z]), np.stack([b, a])])
    assert mean_dice(batch_p, batch_t) == pytest.approx((1.0 + 0.0 + 2 / 3 + 1.0) / 4)


@pytest.mark.parametrize("seed", range(5))
def test_mean_dice_matches_loop_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 70  # more than one internal chunk
    truths = rng.random((n, 4, 12, 18)) < 0.2
    truths[rng.random((n, 4)) < 0.4] = False  # many empty truths, like Clouds
    preds = np.where(rng.random(truths.shape) < 0.8, truths, rng.random(truths.shape) < 0.1)
    preds[rng.random((n, 4)) < 0.3] = False
    want = _dice_reference(preds, truths)
    assert mean_dice(preds, truths) == pytest.approx(want, abs=1e-12)
    prob = np.clip(preds * 0.6 + rng.random(preds.shape) * 0.3, 0, 1)
    m = get_metric("dice")
    assert m.higher_is_better
    assert m(truths.astype(np.uint8), prob) == pytest.approx(_dice_reference(prob >= 0.5, truths), abs=1e-12)
    u8 = np.round(prob * 255).astype(np.uint8)
    assert m(truths.astype(np.float32), u8) == pytest.approx(_dice_reference(u8 >= 128, truths), abs=1e-12)


def test_dice_rejects_bad_shapes() -> None:
    with pytest.raises(BadInput, match=r"\(N, C, H, W\)"):
        mean_dice(np.zeros((2, 3, 3)), np.zeros((2, 3, 3)))
    with pytest.raises(BadInput, match="shape"):
        get_metric("dice")(np.zeros((1, 4, 3, 3)), np.zeros((1, 4, 3, 2)))
    with pytest.raises(BadInput, match="0/1"):
        get_metric("dice")(np.full((1, 1, 2, 2), 2), np.zeros((1, 1, 2, 2)))

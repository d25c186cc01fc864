from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from kcomp.errors import BadInput, BadUsage
from kcomp.metrics._segmentation import dice_empty_one
from kcomp.post.seg_threshold import (DEFAULT_THRESHOLDS, ClassChoice, _fast_scores, _grid, _naive_scores,
                                      mean_dice_after, postprocess, tune_class, tune_naive, uint8_cutoff)

MIN_SIZES = (0, 3, 10, 30, 80, 200)
TOPS = (0.0, 0.5, 0.7, 0.85)


def _maps(seed: int, n: int = 40, shape: tuple[int, int] = (40, 56)) -> tuple[np.ndarray, np.ndarray]:
    """Smooth blobs + pixel noise as uint8 probabilities, truths correlated with them; every 5th image has an
    empty truth, others carry tiny high-probability specks, low-confidence maps (max 179/255, half of them false
    alarms on an empty truth) or nothing at all."""
    rng = np.random.default_rng(seed)
    probs = np.empty((n, *shape), np.uint8)
    truths = np.empty((n, *shape), bool)
    for i in range(n):
        truth = ndimage.gaussian_filter(rng.standard_normal(shape), 5) > 0.05
        if i % 5 == 0:
            truth[:] = False
        logit = 2.5 * (truth - 0.5) + ndimage.gaussian_filter(rng.standard_normal(shape), 3) * 10
        logit += rng.standard_normal(shape) * 0.8
        prob = np.rint(255 / (1 + np.exp(-logit)))
        if i % 5 == 1:  # isolated specks of 1..4 px
            for _ in range(12):
                y, x = rng.integers(0, shape[0] - 2), rng.integers(0, shape[1] - 2)
                prob[y:y + rng.integers(1, 3), x:x + rng.integers(1, 3)] = 240
        elif i % 5 == 2:
            prob = np.minimum(prob * 0.71, 179)  # max exactly 179 = uint8_cutoff(0.7): top 0.7 keeps it
            if i % 10 == 7:
                truth[:] = False
        elif i % 10 == 3:
            prob[:] = 0
        probs[i], truths[i] = prob.astype(np.uint8), truth
    return probs, truths


def _same(a: ClassChoice, b: ClassChoice) -> None:
    assert (a.threshold, a.min_size, a.top) == (b.threshold, b.min_size, b.top)
    assert abs(a.score - b.score) <= 1e-12
    assert [c["threshold"] for c in a.curve] == [c["threshold"] for c in b.curve]
    for ca, cb in zip(a.curve, b.curve, strict=True):
        assert (ca["min_size"], ca["top"]) == (cb["min_size"], cb["top"])
        assert abs(ca["score"] - cb["score"]) <= 1e-12


@pytest.mark.parametrize("seed", range(3))
def test_fast_equals_naive_with_tops(seed: int) -> None:
    probs, truths = _maps(seed)
    # every candidate's score, not just the winners, is identical bit for bit
    grid = _grid(DEFAULT_THRESHOLDS, MIN_SIZES, TOPS)
    scores = _fast_scores(probs, truths, *grid)
    np.testing.assert_array_equal(scores, _naive_scores(probs, truths, *grid))
    assert np.ptp(scores, axis=1).min() > 0 and np.ptp(scores, axis=2).max() > 0.02  # min sizes and tops matter
    fast = tune_class(probs, truths, min_sizes=MIN_SIZES, tops=TOPS)
    assert fast.score == scores.max()
    j, k, v = np.unravel_index(np.argmax(scores), scores.shape)  # first maximum: ties go to smaller values
    assert (fast.threshold, fast.min_size, fast.top) == (grid[0][j], grid[1][k], grid[2][v])
    assert len(fast.curve) == len(DEFAULT_THRESHOLDS)
    assert fast.score == max(c["score"] for c in fast.curve)
    # the tuned score is exactly what applying postprocess + dice_empty_one to every image gives
    assert mean_dice_after(probs, truths, fast) == pytest.approx(fast.score, abs=1e-12)
    direct = np.mean([dice_empty_one(postprocess(p, fast.threshold, fast.min_size, fast.top), t)
                      for p, t in zip(probs, truths, strict=True)])
    assert direct == pytest.approx(fast.score, abs=1e-12)


def test_fast_equals_naive_default_grid_and_beats_plain_threshold() -> None:
    probs, truths = _maps(7, n=30)
    fast = tune_class(probs, truths, min_sizes=MIN_SIZES)
    _same(fast, tune_naive(probs, truths, min_sizes=MIN_SIZES))
    assert fast.top == 0.0
    plain = mean_dice_after(probs, truths, threshold=0.5)
    assert fast.score >= plain


def test_every_uint8_level_and_unsorted_duplicate_grids() -> None:
    """255 distinct cutoffs (the most levels there can be); grids given unsorted, with duplicates and with
    thresholds sharing a cutoff, are normalised the same way by both tuners."""
    probs, truths = _maps(3, n=10, shape=(24, 30))
    thresholds = list(np.arange(1, 256) / 256)[::-1] + [0.5, 0.5]
    fast = tune_class(probs, truths, thresholds=thresholds, min_sizes=(30, 0, 3, 3), tops=(0.0,))
    assert len(fast.curve) == 255
    _same(fast, tune_naive(probs, truths, thresholds=thresholds, min_sizes=(0, 3, 30), tops=(0.0,)))


def test_list_of_maps_of_different_shapes_and_float_probabilities() -> None:
    p1, t1 = _maps(11, n=6, shape=(30, 44))
    p2, t2 = _maps(12, n=6, shape=(23, 61))
    probs, truths = list(p1) + list(p2), list(t1) + list(t2)
    fast = tune_class(probs, truths, min_sizes=MIN_SIZES, tops=TOPS)
    _same(fast, tune_naive(probs, truths, min_sizes=MIN_SIZES, tops=TOPS))
    as_float = [p.astype(np.float32) / 255 for p in probs]  # rint(p*255) recovers the uint8 maps
    _same(tune_class(as_float, [t.astype(np.uint8) for t in truths], min_sizes=MIN_SIZES, tops=TOPS), fast)


def _tiny() -> tuple[np.ndarray, np.ndarray]:
    """Image A: a 2x2 block at 0.9 on its truth plus a lone pixel at 0.6; image B: a lone pixel at 0.9, empty truth."""
    probs = np.zeros((2, 6, 6), np.uint8)
    truths = np.zeros((2, 6, 6), bool)
    probs[0, :2, :2] = 230
    truths[0, :2, :2] = True
    probs[0, 4, 4] = 153
    probs[1, 3, 3] = 230
    return probs, truths


def test_hand_checked_tiny_case() -> None:
    probs, truths = _tiny()
    res = tune_class(probs, truths, thresholds=(0.7, 0.5), min_sizes=(2, 0))
    # t=0.5 (uint8 >= 128): A predicts 5 px (dice 8/9) or 4 px with min_size 2 (dice 1); B: 1 px on an empty
    # truth (dice 0) or nothing (dice 1). t=0.7 (>= 179): A is exactly the block, B as before.
    want = {(0.5, 0): (8 / 9 + 0) / 2, (0.5, 2): 1.0, (0.7, 0): 0.5, (0.7, 2): 1.0}
    for (t, m), score in want.items():
        assert mean_dice_after(probs, truths, threshold=t, min_size=m) == pytest.approx(score, abs=1e-15)
    assert (res.threshold, res.min_size, res.top, res.score) == (0.5, 2, 0.0, 1.0)  # tie: smallest threshold
    assert res.curve == [{"threshold": 0.5, "score": 1.0, "min_size": 2, "top": 0.0},
                         {"threshold": 0.7, "score": 1.0, "min_size": 2, "top": 0.0}]
    assert tune_naive(probs, truths, thresholds=(0.5, 0.7), min_sizes=(0, 2)) == res


def test_top_threshold_empties_low_confidence_maps() -> None:
    probs = np.zeros((2, 6, 6), np.uint8)
    truths = np.zeros((2, 6, 6), bool)
    probs[0, 1:3, 1:3], truths[0, 1:3, 1:3] = 230, True  # confident and right
    probs[1, 2:4, 2:4] = 204  # 0.8: a block min_size cannot remove, on an empty truth
    res = tune_class(probs, truths, thresholds=(0.5,), min_sizes=(0, 2), tops=(0.0, 0.85, 0.95))
    assert (res.min_size, res.top, res.score) == (0, 0.85, 1.0)
    assert tune_naive(probs, truths, thresholds=(0.5,), min_sizes=(0, 2), tops=(0.0, 0.85, 0.95)) == res
    assert mean_dice_after(probs, truths, threshold=0.5, top=0.0) == 0.5
    assert mean_dice_after(probs, truths, threshold=0.5, top=0.95) == 0.5  # now A is emptied too
    # top compares the raw maximum: 204/255 = 0.8 is not > 0.8, 205/255 is
    assert not postprocess(probs[1], 0.5, 0, top=0.8).any()
    probs[1, 2, 2] = 205
    assert postprocess(probs[1], 0.5, 0, top=0.8).sum() == 4
    kept = tune_class(probs, truths, thresholds=(0.5,), min_sizes=(0,), tops=(0.8,))  # max == cutoff: kept
    assert kept.score == 0.5 == mean_dice_after(probs, truths, kept)


def test_cutoff_and_min_size_rule() -> None:
    assert uint8_cutoff(0.5) == 128 and uint8_cutoff(0.6) == 154 and uint8_cutoff(0.0) == 1
    assert uint8_cutoff(0.999) == 255 and uint8_cutoff(1.0) == 256
    assert [uint8_cutoff(t) for t in (0.3, 0.65, 0.8)] == [int(np.floor(t * 255)) + 1 for t in (0.3, 0.65, 0.8)]
    prob = np.zeros((8, 8), np.uint8)
    prob[0, 0] = 153  # exactly 0.6: not > 0.6
    prob[0, 7] = 154
    assert postprocess(prob, 0.6, 0).tolist() == (prob >= 154).tolist()
    # 8-connectivity: a diagonal chain of 3 px is one component
    prob[:] = 0
    prob[4, 1], prob[5, 2], prob[6, 3] = 200, 200, 200
    prob[1, 5:7] = 200  # a separate 2 px component
    assert postprocess(prob, 0.5, 3).sum() == 3
    assert postprocess(prob, 0.5, 2).sum() == 5
    assert postprocess(prob, 0.5, 4).sum() == 0
    got = postprocess(prob.astype(np.float64) / 255, 0.5, 3)
    assert got.dtype == np.bool_ and got.sum() == 3


def test_min_size_removes_specks() -> None:
    probs, truths = _maps(5, n=20)
    specky = probs[1::5]
    assert any(postprocess(p, 0.5, 0).sum() > postprocess(p, 0.5, 5).sum() for p in specky)
    res = tune_class(probs[1::5], truths[1::5], thresholds=(0.5,), min_sizes=(0, 5))
    assert res.min_size == 5
    assert res.score > mean_dice_after(probs[1::5], truths[1::5], threshold=0.5, min_size=0)


def test_validation_errors() -> None:
    probs, truths = _tiny()
    with pytest.raises(BadInput, match=r"\(2, 6, 6\).*\(2, 6, 5\)"):
        tune_class(probs, truths[:, :, :5])
    with pytest.raises(BadInput, match="2 probability maps but 1"):
        tune_class(list(probs), list(truths[:1]))
    with pytest.raises(BadInput, match=r"image 1: prob has shape \(6, 6\) but truth has \(5, 6\)"):
        tune_class(list(probs), [truths[0], truths[1, :5]])
    with pytest.raises(BadInput, match=r"image 1: prob has shape \(6, 6\) but truth has \(5, 6\)"):
        tune_class(probs, [truths[0], truths[1, :5]])  # an array of maps with a list of masks
    with pytest.raises(BadInput, match="dtype int16"):
        tune_class(probs.astype(np.int16), truths)
    with pytest.raises(BadInput, match=r"\[0, 1\]"):
        tune_class(probs.astype(np.float32), truths)  # 0..255 floats are not probabilities
    with pytest.raises(BadInput, match="no images"):
        tune_class([], [])
    with pytest.raises(BadInput, match=r"\(N, H, W\)"):
        tune_class(probs[0], truths[0])
    for kwargs, msg in (({"thresholds": (0.5, 1.0)}, "threshold 1.0"), ({"thresholds": (0.0,)}, "threshold 0.0"),
                        ({"thresholds": ()}, "at least one"), ({"min_sizes": (-1,)}, "min_size -1"),
                        ({"min_sizes": (2.5,)}, "min_size 2.5"), ({"tops": (1.0,)}, "top 1.0"),
                        ({"tops": (float("nan"),)}, "top nan")):
        with pytest.raises(BadUsage, match=msg):
            tune_class(probs, truths, **kwargs)
        with pytest.raises(BadUsage, match=msg):
            tune_naive(probs, truths, **kwargs)
    with pytest.raises(BadUsage, match="threshold 1.5"):
        postprocess(probs[0], 1.5, 0)
    with pytest.raises(BadUsage, match="needs a ClassChoice or a threshold"):
        mean_dice_after(probs, truths)

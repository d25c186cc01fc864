from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from kcomp.errors import BadInput, BadUsage
from kcomp.metrics._segmentation import fbeta_pixels
from kcomp.post.ink_threshold import InkThreshold, downscale_maps, remove_small, search_threshold, tune


def _fragment(rng: np.random.Generator, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Blobby ink label, a blurred-noise probability map correlated with it, and a blobby papyrus mask."""
    label = ndimage.gaussian_filter(rng.standard_normal(shape), 4) > 0.05
    noise = ndimage.gaussian_filter(rng.standard_normal(shape), 2) * 6
    logit = 2.5 * (label - 0.5) + noise
    prob = np.round(255 / (1 + np.exp(-logit))).astype(np.uint8)
    mask = ndimage.gaussian_filter(rng.standard_normal(shape), 6) > -0.05
    return prob, label, mask


def _fragments(seed: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [_fragment(rng, (150, 203)), _fragment(rng, (97, 131))]  # not multiples of 4: edges get cropped


def _soft_reference(frags: list, downscale: int, thresholds: list[float], beta: float = 0.5) -> list[float]:
    """Per-threshold recompute of the documented downscaled score (w = mask fraction, soft ink fraction)."""
    maps = [downscale_maps(p, lab, m, downscale) for p, lab, m in frags]
    b2 = beta * beta
    out = []
    for t in thresholds:
        tp = fp = fn = 0.0
        for ps, ink, w in maps:
            on = ps >= t
            w64, ink64 = w.astype(np.float64), ink.astype(np.float64)
            tp += float(np.sum(w64 * ink64 * on))
            fp += float(np.sum(w64 * (1 - ink64) * on))
            fn += float(np.sum(w64 * ink64 * ~on))
        d = (1 + b2) * tp + b2 * fn + fp
        out.append(1.0 if d == 0 else (1 + b2) * tp / d)
    return out


@pytest.mark.parametrize("seed", range(3))
def test_histogram_search_equals_bruteforce_full_resolution(seed: int) -> None:
    frags = _fragments(seed)
    thr, score, curve = search_threshold(frags, downscale=1)
    assert len(curve) == 256
    probs = np.concatenate([downscale_maps(p, lab, m, 1)[0].ravel() for p, lab, m in frags])
    labels = np.concatenate([lab.ravel() for _, lab, _ in frags])
    masks = np.concatenate([m.ravel() for _, _, m in frags])
    want = [fbeta_pixels(probs >= t, labels, masks) for t, _ in curve]
    np.testing.assert_allclose([s for _, s in curve], want, rtol=0, atol=1e-9)
    assert score == pytest.approx(max(want), abs=1e-12)
    assert thr == curve[int(np.argmax(want))][0]
    # every uint8 level is separated by the 256 default thresholds, so the curve is not a coarse staircase
    assert len({round(s, 12) for _, s in curve}) > 100


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("downscale", [1, 4])
def test_histogram_search_equals_soft_reference(seed: int, downscale: int) -> None:
    frags = _fragments(seed)
    for steps, beta in ((256, 0.5), (37, 1.0)):
        _, _, curve = search_threshold(frags, downscale=downscale, steps=steps, beta=beta)
        want = _soft_reference(frags, downscale, [t for t, _ in curve], beta)
        np.testing.assert_allclose([s for _, s in curve], want, rtol=0, atol=1e-9)


def test_downscale_maps_are_cropped_block_means() -> None:
    rng = np.random.default_rng(0)
    prob, label, mask = _fragment(rng, (21, 30))
    ps, ink, w = downscale_maps(prob, label, mask, 4)
    assert ps.shape == ink.shape == w.shape == (5, 7) and ps.dtype == np.float32
    for i in range(5):
        for j in range(7):
            block = (slice(4 * i, 4 * i + 4), slice(4 * j, 4 * j + 4))
            assert ps[i, j] == pytest.approx(prob[block].mean() / 255, rel=1e-6)
            assert ink[i, j] == pytest.approx(label[block].mean())
            assert w[i, j] == pytest.approx(mask[block].mean())
    p1, _, _ = downscale_maps(prob, label, mask, 1)
    np.testing.assert_allclose(p1, prob / 255, rtol=1e-6)


def _remove_small_reference(binary: np.ndarray, min_size: int) -> np.ndarray:
    lab, n = ndimage.label(binary, structure=np.ones((3, 3), dtype=int))
    out = np.zeros_like(binary, dtype=bool)
    for k in range(1, n + 1):
        comp = lab == k
        if comp.sum() >= min_size:
            out |= comp
    return out


@pytest.mark.parametrize("seed", range(4))
def test_remove_small_matches_component_loop(seed: int) -> None:
    rng = np.random.default_rng(seed)
    binary = rng.random((60, 83)) < 0.42
    binary[10:30, 5:40] |= ndimage.gaussian_filter(rng.standard_normal((20, 35)), 2) > 0
    for min_size in (0, 1, 2, 3, 5, 20, 100, 10_000):
        got = remove_small(binary, min_size)
        assert got.dtype == np.bool_
        np.testing.assert_array_equal(got, _remove_small_reference(binary, min_size))
    np.testing.assert_array_equal(remove_small(binary.astype(np.uint8), 5), _remove_small_reference(binary, 5))


def _specky_fragment(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Large ink blobs predicted well, plus many 3x3 high-probability false-positive specks."""
    rng = np.random.default_rng(seed)
    shape = (320, 320)
    label = np.zeros(shape, dtype=bool)
    for _ in range(6):
        y, x = rng.integers(0, 260, 2)
        label[y:y + 50, x:x + 45] = True
    prob = np.where(label, rng.integers(180, 256, shape), rng.integers(0, 90, shape)).astype(np.uint8)
    for _ in range(300):
        y, x = rng.integers(0, 317, 2)
        if not label[max(0, y - 2):y + 5, max(0, x - 2):x + 5].any():
            prob[y:y + 3, x:x + 3] = 230
    mask = np.ones(shape, dtype=bool)
    mask[:, :20] = False
    return prob, label, mask


def test_tune_removes_specks_and_scores_like_remove_small() -> None:
    frags = [_specky_fragment(0), _specky_fragment(1)]
    res = tune(frags, downscale=4, min_sizes=(0, 50, 500, 100_000))
    assert isinstance(res, InkThreshold)
    assert res.downscale == 4 and len(res.curve) == 256

    def direct(min_size: int) -> float:
        preds, labels, masks = [], [], []
        for prob, label, mask in frags:
            preds.append(remove_small(downscale_maps(prob, label, mask, 1)[0] >= res.threshold, min_size).ravel())
            labels.append(label.ravel())
            masks.append(mask.ravel())
        return fbeta_pixels(np.concatenate(preds), np.concatenate(labels), np.concatenate(masks))

    assert res.min_size > 0
    assert res.score == pytest.approx(direct(res.min_size), abs=1e-12)
    assert res.score > direct(0) + 0.05
    assert res.score > direct(100_000)


def test_tune_without_specks_keeps_min_size_zero_on_ties() -> None:
    label = np.zeros((64, 64), dtype=bool)
    label[10:40, 10:40] = True
    prob = np.where(label, 220, 10).astype(np.uint8)
    res = tune([(prob, label, np.ones_like(label))], downscale=1, min_sizes=(10, 0, 100))
    assert res.min_size == 0 and res.score == 1.0
    assert 10 / 255 < res.threshold <= 220 / 255


def test_input_validation_names_the_fragment() -> None:
    good = _fragment(np.random.default_rng(0), (40, 40))
    prob, label, mask = good
    with pytest.raises(BadInput, match="fragment 1.*mask"):
        search_threshold([good, (prob, label, mask[:, :30])], downscale=1)
    with pytest.raises(BadInput, match="fragment 1.*label"):
        tune([good, (prob, label[:30], mask)])
    with pytest.raises(BadInput, match="fragment 0.*uint8"):
        search_threshold([(prob / 255.0, label, mask)])
    with pytest.raises(BadInput, match="fragment 0.*smaller"):
        search_threshold([good], downscale=64)
    with pytest.raises(BadInput, match="no fragments"):
        tune([])
    with pytest.raises(BadUsage, match="downscale"):
        search_threshold([good], downscale=0)
    with pytest.raises(BadUsage, match="min_sizes"):
        tune([good], min_sizes=())

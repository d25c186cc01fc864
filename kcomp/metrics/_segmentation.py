"""Segmentation metrics on binary maps: pixel F-beta inside a region (Vesuvius ink, F0.5 within mask.png) and
mean Dice over (image, class) pairs with empty/empty = 1 (Understanding Clouds). Counting is done with
`np.count_nonzero` on boolean maps so that full 8181x6330 fragments cost tens of milliseconds, not seconds."""

from __future__ import annotations

import numpy as np

from kcomp.errors import BadInput
from kcomp.metrics import register_metric

# Images per chunk in `mean_dice`, so that thresholding a large (N, C, H, W) float batch does not allocate a
# second copy of it at once.
_DICE_CHUNK = 64


def fbeta_from_counts(tp: float, fp: float, fn: float, beta: float = 0.5) -> float:
    """F-beta from confusion counts; 1.0 when there is nothing to find and nothing was predicted (tp=fp=fn=0)."""
    b2 = beta * beta
    denom = (1.0 + b2) * tp + b2 * fn + fp
    return 1.0 if denom == 0 else float((1.0 + b2) * tp / denom)


def _binary(a: np.ndarray, what: str) -> np.ndarray:
    """A boolean view of a 0/1 (or bool) map; anything else non-zero counts as positive."""
    a = np.asarray(a)
    if a.dtype == np.bool_:
        return a
    if a.dtype.kind not in "iuf":
        raise BadInput(f"{what} must be a binary numeric map, got dtype {a.dtype}")
    return a != 0


def fbeta_pixels(pred: np.ndarray, truth: np.ndarray, mask: np.ndarray | None = None, beta: float = 0.5) -> float:
    """Pixel F-beta of binary maps, counting only pixels where `mask` is true (all pixels if mask is None).

    Conventions: no true and no predicted positives (inside the mask) -> 1.0, since there was nothing to find and
    nothing was claimed; pred has no positives while truth has some -> 0.0 (and likewise positives predicted on an
    empty truth -> 0.0).
    """
    p, t = _binary(pred, "pred"), _binary(truth, "truth")
    if p.shape != t.shape:
        raise BadInput(f"fbeta: pred has shape {p.shape} but truth has {t.shape}")
    if mask is not None:
        m = _binary(mask, "mask")
        if m.shape != p.shape:
            raise BadInput(f"fbeta: mask has shape {m.shape} but pred has {p.shape}")
        p = p & m
        t = t & m
    tp = np.count_nonzero(p & t)
    return fbeta_from_counts(tp, np.count_nonzero(p) - tp, np.count_nonzero(t) - tp, beta)


def _scores_to_binary(y_score: np.ndarray, metric: str) -> np.ndarray:
    """Threshold at probability 0.5: uint8 scores are probability*255 (so >= 128), others must lie in [0, 1]."""
    s = np.asarray(y_score)
    if s.dtype == np.uint8:
        return s >= 128
    if s.dtype == np.bool_:
        return s
    if s.dtype.kind not in "iuf":
        raise BadInput(f"{metric}: y_score must be probabilities, got dtype {s.dtype}")
    s = s.astype(np.float64, copy=False)
    if s.size and not np.isfinite(s).all():
        raise BadInput(f"{metric}: y_score contains NaN or inf")
    if s.size and (s.min() < 0 or s.max() > 1):
        raise BadInput(f"{metric}: y_score must be probabilities in [0, 1] (or uint8 0..255), "
                       f"found {s.min():g}..{s.max():g}")
    return s >= 0.5


def _check_labels(y_true: np.ndarray, metric: str) -> np.ndarray:
    t = np.asarray(y_true)
    if t.dtype == np.bool_:
        return t
    if t.dtype.kind not in "iuf":
        raise BadInput(f"{metric}: y_true must hold integer labels, got dtype {t.dtype}")
    if t.dtype.kind == "f" and t.size and (not np.isfinite(t).all() or (t != np.round(t)).any()):
        raise BadInput(f"{metric}: y_true must hold integer labels 0/1")
    if t.size and t.min() < 0:
        raise BadInput(f"{metric}: y_true must not be negative, found {t.min()}")
    return t


@register_metric("f05", higher_is_better=True)
def f05(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """Pixel F0.5 at probability 0.5; y_true 0/1, any value > 1 (e.g. 2) = ignored pixel outside the mask.

    y_score is float probability in [0, 1] or uint8 0..255 (= probability*255; positive when >= 128). The
    ignore value lets a single label array carry Vesuvius' mask.png: encode outside-the-papyrus pixels as 2.
    No positives anywhere (inside the mask) scores 1.0, as in `fbeta_pixels`.
    """
    t = _check_labels(y_true, "f05")
    s = np.asarray(y_score)
    if t.shape != s.shape:
        raise BadInput(f"f05: y_true has shape {t.shape} but y_score has {s.shape}")
    if t.size == 0:
        raise BadInput("f05: no pixels to score")
    return fbeta_pixels(_scores_to_binary(s, "f05"), t == 1, t <= 1, beta=0.5)


def dice_empty_one(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice 2|A∩B|/(|A|+|B|) of one (image, class) mask pair; 1.0 when both are empty (Clouds' convention)."""
    p, t = _binary(pred, "pred"), _binary(truth, "truth")
    if p.shape != t.shape:
        raise BadInput(f"dice: pred has shape {p.shape} but truth has {t.shape}")
    denom = np.count_nonzero(p) + np.count_nonzero(t)
    return 1.0 if denom == 0 else 2.0 * np.count_nonzero(p & t) / denom


def _pair_dice(p: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Dice of every (image, class) pair of boolean (n, C, H, W) blocks, shape (n, C)."""
    inter = np.count_nonzero(p & t, axis=(2, 3))
    denom = np.count_nonzero(p, axis=(2, 3)) + np.count_nonzero(t, axis=(2, 3))
    return np.where(denom == 0, 1.0, 2.0 * inter / np.maximum(denom, 1))


def _check_4d(p: np.ndarray, t: np.ndarray, metric: str) -> None:
    if t.ndim != 4:
        raise BadInput(f"{metric}: masks must be (N, C, H, W), got shape {t.shape}")
    if p.shape != t.shape:
        raise BadInput(f"{metric}: predictions have shape {p.shape} but truth has {t.shape}")
    if t.shape[0] * t.shape[1] == 0:
        raise BadInput(f"{metric}: no (image, class) pairs to score")


def mean_dice(preds: np.ndarray, truths: np.ndarray) -> float:
    """Mean Dice over all (image, class) pairs of binary (N, C, H, W) masks; empty/empty pairs score 1."""
    p, t = np.asarray(preds), np.asarray(truths)
    _check_4d(p, t, "dice")
    total = 0.0
    for i in range(0, len(t), _DICE_CHUNK):
        total += float(_pair_dice(_binary(p[i:i + _DICE_CHUNK], "pred"),
                                  _binary(t[i:i + _DICE_CHUNK], "truth")).sum())
    return total / (t.shape[0] * t.shape[1])


@register_metric("dice", higher_is_better=True)
def dice(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """Mean Dice over (image, class) pairs at probability 0.5; y_true (N, C, H, W) 0/1, empty/empty = 1.

    y_score holds probabilities in [0, 1] or uint8 0..255 (= probability*255, positive when >= 128).
    """
    t, s = _check_labels(y_true, "dice"), np.asarray(y_score)
    _check_4d(s, t, "dice")
    if t.dtype != np.bool_ and t.size and t.max() > 1:
        raise BadInput(f"dice: y_true must hold 0/1 masks, found {t.max()}")
    total = 0.0
    for i in range(0, len(t), _DICE_CHUNK):
        total += float(_pair_dice(_scores_to_binary(s[i:i + _DICE_CHUNK], "dice"), t[i:i + _DICE_CHUNK] != 0).sum())
    return total / (t.shape[0] * t.shape[1])

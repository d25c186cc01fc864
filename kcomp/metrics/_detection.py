"""Detection metrics: PASCAL VOC 2010+ average precision at an IoU threshold (all-point interpolation) and the
SIIM-FISABIO-RSNA COVID-19 score, the mean of 6 such APs (study classes and image-level none/opacity as boxes).

Choices, each pinned by tests/test_map.py:
- Matching follows the VOC devkit's `voc_eval`: detections of all images sorted by score, each takes the ground
  truth box it overlaps most; it is a true positive if that IoU is strictly greater than `iou_thr` (`ovmax > ovthresh`
  in the devkit, so IoU exactly 0.5 does not count) and that box was not taken yet, otherwise a false positive
  (duplicates included). Images without ground truth only add false positives.
- Coordinates are continuous: areas are (x2-x1)*(y2-y1), without the devkit's +1 for inclusive pixel indices.
- Tied scores: precision and recall are read after each group of equal scores (as sklearn's precision_recall_curve
  does), so the AP does not depend on the order of tied detections; with distinct scores this is the devkit exactly.
- No ground truth at all: AP is undefined and returned as nan; means skip such classes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from kcomp.errors import BadInput
from kcomp.metrics import register_metric

if TYPE_CHECKING:
    import pandas as pd

IMAGE_CLASSES = ("none", "opacity")
STUDY_CLASSES = ("negative", "typical", "indeterminate", "atypical")
STUDY_COLUMNS = {"Negative for Pneumonia": "negative", "Typical Appearance": "typical",
                 "Indeterminate Appearance": "indeterminate", "Atypical Appearance": "atypical"}
UNIT_BOX = (0.0, 0.0, 1.0, 1.0)

Group = tuple[str, float, float, float, float, float]  # (label, conf, x1, y1, x2, y2), as in a PredictionString


def voc_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """VOC2010+ AP: make precision monotone from the right (its envelope), then sum the area of the step curve at
    the points where recall changes (the devkit's `voc_ap(use_07_metric=False)`)."""
    mrec = np.concatenate([[0.0], np.asarray(recall, dtype=np.float64), [1.0]])
    mpre = np.concatenate([[0.0], np.asarray(precision, dtype=np.float64), [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(k,4) x (g,4) -> (k,g) IoU of x1,y1,x2,y2 boxes; 0 where both boxes have no area."""
    iw = np.maximum(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0.0)
    ih = np.maximum(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0.0)
    inter = iw * ih
    union = ((a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]))[:, None] + ((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]))[None]
    union = union - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _rows(a: Any, width: int, what: str, k: int) -> np.ndarray:
    arr = np.asarray(a, dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, width))
    if arr.ndim != 2 or arr.shape[1] != width:
        raise BadInput(f"{what} of image {k} must have shape (n, {width}), got {arr.shape}")
    if not np.isfinite(arr).all():
        raise BadInput(f"{what} of image {k} contains NaN or inf")
    return arr


def average_precision(preds: Sequence[np.ndarray], truths: Sequence[np.ndarray], iou_thr: float = 0.5) -> float:
    """AP of one class over images: `preds[i]` (k,5) x1,y1,x2,y2,score and `truths[i]` (g,4) boxes of image i.
    nan when no image has a ground-truth box."""
    if len(preds) != len(truths):
        raise BadInput(f"{len(preds)} prediction lists for {len(truths)} images")
    p = [_rows(x, 5, "predictions", k) for k, x in enumerate(preds)]
    t = [_rows(x, 4, "ground truth", k) for k, x in enumerate(truths)]
    n_gt = np.array([len(x) for x in t])
    npos = int(n_gt.sum())
    if npos == 0:
        return float("nan")
    if sum(len(x) for x in p) == 0:
        return 0.0
    gt_start = np.concatenate([[0], np.cumsum(n_gt)])
    scores, best_gt = [], []  # best_gt: global index of the most overlapped truth box, -1 if IoU <= iou_thr
    for k, (pk, tk) in enumerate(zip(p, t, strict=True)):
        scores.append(pk[:, 4])
        if len(pk) == 0 or len(tk) == 0:
            best_gt.append(np.full(len(pk), -1))
            continue
        ov = _iou(pk[:, :4], tk)
        j = ov.argmax(axis=1)
        best_gt.append(np.where(ov[np.arange(len(pk)), j] > iou_thr, gt_start[k] + j, -1))
    s = np.concatenate(scores)
    order = np.argsort(-s, kind="stable")
    s, g = s[order], np.concatenate(best_gt)[order]
    tp = np.zeros(len(s))
    hit = np.flatnonzero(g >= 0)
    _, first = np.unique(g[hit], return_index=True)  # the best-ranked claim on each truth box wins it
    tp[hit[first]] = 1.0
    tp = np.cumsum(tp)
    ends = np.flatnonzero(np.append(s[1:] != s[:-1], True))  # last detection of each group of equal scores
    return voc_ap(tp[ends] / npos, tp[ends] / (ends + 1.0))


@register_metric("map50", higher_is_better=True)
def map50(y_true: Sequence[np.ndarray], y_score: Sequence[np.ndarray] | np.ndarray) -> float:
    """Mean over truth labels of VOC2010 AP at IoU 0.5; per image truth (g,5) x1,y1,x2,y2,label and predictions
    (k,6) x1,y1,x2,y2,score,label (rows with score <= 0 or label < 0 are padding)."""
    if len(y_true) != len(y_score):
        raise BadInput(f"map50: {len(y_true)} truth lists for {len(y_score)} prediction lists")
    if len(y_true) == 0:
        raise BadInput("map50: no images to score")
    truths = [_rows(t, 5, "map50 truth", k) for k, t in enumerate(y_true)]
    preds = [_rows(p, 6, "map50 predictions", k) for k, p in enumerate(y_score)]
    preds = [p[(p[:, 4] > 0) & (p[:, 5] >= 0)] for p in preds]
    labels = np.unique(np.concatenate([np.rint(t[:, 4]) for t in truths]))
    if len(labels) == 0:
        return float("nan")
    aps = [average_precision([p[np.rint(p[:, 5]) == c, :5] for p in preds],
                             [t[np.rint(t[:, 4]) == c, :4] for t in truths]) for c in labels]
    return float(np.mean(aps))


def siim_map(image_preds: Mapping[str, Sequence[Group]], image_truths: Mapping[str, Sequence[Group]],
             study_preds: Mapping[str, Sequence[Group]], study_truths: Mapping[str, Sequence[Group]],
             ) -> dict[str, Any]:
    """The SIIM COVID-19 score. Every argument maps an id to groups `(label, conf, x1, y1, x2, y2)` (tuples or
    `kcomp.formats.prediction_string.Pred`), i.e. a parsed PredictionString:
    - images: labels "opacity" (a box in pixels) and "none"; a truth image without opacity is ("none", 1, 0, 0, 1, 1);
    - studies: labels negative/typical/indeterminate/atypical; a truth study holds one group, its class.
    Truth confs are ignored. "none" and the study classes are whole-image answers: their boxes count as
    [0, 0, 1, 1] whatever coordinates are given, so they always overlap their truth with IoU 1.
    The truth mappings fix which ids are scored; a predicted id absent from the truth is an error, and a truth id
    without predictions simply finds nothing.

    Returns {"map": mean AP over the 6 classes (skipping any with no truth, nan if all), "ap": {class: AP}}."""
    ap = {}
    for preds, truths, classes, what in ((study_preds, study_truths, STUDY_CLASSES, "study"),
                                         (image_preds, image_truths, IMAGE_CLASSES, "image")):
        extra = sorted(set(preds) - set(truths))
        if extra:
            raise BadInput(f"{len(extra)} predicted {what} id(s) are not in the truth, e.g. {extra[0]!r}")
        ids = list(truths)
        p = {i: _groups(preds.get(i, ()), classes, f"{what} {i}") for i in ids}
        t = {i: _groups(truths[i], classes, f"truth {what} {i}") for i in ids}
        for c in classes:
            ap[c] = average_precision([np.array([[*b, conf] for lab, conf, b in p[i] if lab == c]) for i in ids],
                                      [np.array([b for lab, _, b in t[i] if lab == c]) for i in ids])
    valid = [v for v in ap.values() if not np.isnan(v)]
    return {"map": float(np.mean(valid)) if valid else float("nan"), "ap": ap}


def _groups(groups: Sequence[Any], classes: tuple[str, ...], where: str) -> list[tuple[str, float, tuple]]:
    """(label, conf, box) with the unit box for whole-image classes; BadInput naming an unknown label."""
    out = []
    for g in groups:
        lab, conf, *box = (g.label, g.conf, g.x1, g.y1, g.x2, g.y2) if hasattr(g, "label") else tuple(g)
        if len(box) != 4:
            raise BadInput(f"{where}: group {(lab, conf, *box)!r} is not (label, conf, x1, y1, x2, y2)")
        if lab not in classes:
            raise BadInput(f"{where}: label {lab!r} is not one of {', '.join(classes)}")
        out.append((lab, float(conf), tuple(map(float, box)) if lab == "opacity" else UNIT_BOX))
    return out


def siim_map_from_frames(submission: pd.DataFrame, truth_image_csv: pd.DataFrame,
                         truth_study_csv: pd.DataFrame) -> dict[str, Any]:
    """Score a Kaggle submission (`id`, `PredictionString`; ids `<image>_image` and `<study>_study`) against
    train_image_level.csv (`id`, `label` = "opacity 1 x1 y1 x2 y2 ..." or "none 1 0 0 1 1") and
    train_study_level.csv (`id` = `<study>_study`, one-hot columns of the 4 study classes). See `siim_map`."""
    from kcomp.formats.prediction_string import parse_prediction_string

    for df, cols, name in ((submission, ["id", "PredictionString"], "submission"),
                           (truth_image_csv, ["id", "label"], "image-level truth"),
                           (truth_study_csv, ["id", *STUDY_COLUMNS], "study-level truth")):
        missing = [c for c in cols if c not in df.columns]
        if missing:
            raise BadInput(f"{name} lacks column(s) {', '.join(missing)}")
    dup = submission["id"][submission["id"].duplicated()]
    if len(dup):
        raise BadInput(f"submission has id {dup.iloc[0]!r} more than once")
    image_preds: dict[str, list] = {}
    study_preds: dict[str, list] = {}
    for i, text in zip(submission["id"], submission["PredictionString"], strict=True):
        i = str(i)
        if not i.endswith(("_image", "_study")):
            raise BadInput(f"submission id {i!r} ends neither in _image nor in _study")
        groups = parse_prediction_string("" if text is None or text != text else text, where=f"submission {i}")
        (image_preds if i.endswith("_image") else study_preds)[i] = groups
    image_truths = {str(i): parse_prediction_string(text, where=f"image-level truth {i}")
                    for i, text in zip(truth_image_csv["id"], truth_image_csv["label"], strict=True)}
    import pandas as pd

    onehot = truth_study_csv[list(STUDY_COLUMNS)].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    bad = ~((onehot == 0) | (onehot == 1)).all(axis=1) | (onehot.sum(axis=1) != 1)
    if bad.any():
        raise BadInput(f"study-level truth row {int(np.argmax(bad)) + 1}: the class columns must be one-hot "
                       f"(one 1, three 0)")
    names = [STUDY_COLUMNS[c] for c in STUDY_COLUMNS]
    study_truths = {str(i): [(names[int(k)], 1.0, *UNIT_BOX)]
                    for i, k in zip(truth_study_csv["id"], onehot.argmax(axis=1), strict=True)}
    return siim_map(image_preds, image_truths, study_preds, study_truths)

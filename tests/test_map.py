"""mAP@0.5 (PASCAL VOC 2010+, all-point) against hand-worked cases, a literal copy of the VOC devkit's voc_eval and
sklearn's precision-recall curve; the SIIM 6-class score on tiny submissions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, precision_recall_curve

from kcomp.errors import BadInput
from kcomp.formats.prediction_string import Pred, format_prediction_string
from kcomp.metrics import get_metric
from kcomp.metrics._detection import average_precision, map50, siim_map, siim_map_from_frames, voc_ap

# --- independent reference: the devkit's voc_eval.py, followed line by line -------------------------------------


def devkit_voc_ap(rec, prec):
    """voc_ap(rec, prec, use_07_metric=False) of the VOC devkit (py-faster-rcnn's voc_eval.py)."""
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    for i in range(mpre.size - 1, 0, -1):
        mpre[i - 1] = np.maximum(mpre[i - 1], mpre[i])
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1])


def devkit_voc_eval(preds, truths, ovthresh=0.5):
    """voc_eval's matching loop. One deliberate change: no +1 in widths/heights (the devkit counts inclusive
    pixel indices; our boxes are continuous)."""
    class_recs = {k: {"bbox": np.asarray(t, dtype=float).reshape(-1, 4), "det": [False] * len(t)}
                  for k, t in enumerate(truths)}
    npos = sum(len(t) for t in truths)
    image_ids = [k for k, p in enumerate(preds) for _ in range(len(p))]
    confidence = np.array([r[4] for p in preds for r in p])
    BB = np.array([r[:4] for p in preds for r in p], dtype=float).reshape(-1, 4)
    sorted_ind = np.argsort(-confidence)
    BB = BB[sorted_ind, :]
    image_ids = [image_ids[x] for x in sorted_ind]
    nd = len(image_ids)
    tp, fp = np.zeros(nd), np.zeros(nd)
    for d in range(nd):
        R = class_recs[image_ids[d]]
        bb = BB[d, :].astype(float)
        ovmax = -np.inf
        BBGT = R["bbox"].astype(float)
        if BBGT.size > 0:
            ixmin = np.maximum(BBGT[:, 0], bb[0])
            iymin = np.maximum(BBGT[:, 1], bb[1])
            ixmax = np.minimum(BBGT[:, 2], bb[2])
            iymax = np.minimum(BBGT[:, 3], bb[3])
            iw = np.maximum(ixmax - ixmin, 0.0)
            ih = np.maximum(iymax - iymin, 0.0)
            inters = iw * ih
            uni = ((bb[2] - bb[0]) * (bb[3] - bb[1]) + (BBGT[:, 2] - BBGT[:, 0]) * (BBGT[:, 3] - BBGT[:, 1])
                   - inters)
            overlaps = inters / uni
            ovmax = np.max(overlaps)
            jmax = np.argmax(overlaps)
        if ovmax > ovthresh:
            if not R["det"][jmax]:
                tp[d] = 1.0
                R["det"][jmax] = 1
            else:
                fp[d] = 1.0
        else:
            fp[d] = 1.0
    fp = np.cumsum(fp)
    tp = np.cumsum(tp)
    rec = tp / float(npos)
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return devkit_voc_ap(rec, prec)


def _scene(rng, n_images):
    """Truth boxes per image and predictions: jittered copies (some duplicates) plus random boxes."""
    preds, truths = [], []
    for _ in range(n_images):
        g = int(rng.integers(0, 5))
        xy = rng.uniform(0, 80, (g, 2))
        gt = np.concatenate([xy, xy + rng.uniform(5, 30, (g, 2))], 1)
        near = gt[rng.integers(0, g, int(rng.integers(0, 2 * g + 1)))] if g else np.zeros((0, 4))
        near = near + rng.normal(0, 3, near.shape)
        xy = rng.uniform(0, 80, (int(rng.integers(0, 4)), 2))
        far = np.concatenate([xy, xy + rng.uniform(5, 30, xy.shape)], 1)
        boxes = np.concatenate([near, far])
        preds.append(np.concatenate([boxes, rng.uniform(0, 1, (len(boxes), 1))], 1))
        truths.append(gt)
    return preds, truths


# --- voc_ap and average_precision by hand -----------------------------------------------------------------------

def test_voc_ap_by_hand():
    # points (r, p): (0.5, 1), (1, 0.5) -> 0.5 * 1 + 0.5 * 0.5
    assert voc_ap(np.array([0.5, 1.0]), np.array([1.0, 0.5])) == pytest.approx(0.75)
    # the envelope lifts a dip: (1/3, 1), (1/3, .5), (2/3, .4), (2/3, .5) -> 1/3 * 1 + 1/3 * .5 (recall ends at 2/3)
    assert voc_ap(np.array([1, 1, 2, 2]) / 3, np.array([1, 0.5, 0.4, 0.5])) == pytest.approx(0.5)
    assert voc_ap(np.zeros(0), np.zeros(0)) == 0.0


def test_average_precision_three_truths_five_predictions():
    gt = [np.array([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]], dtype=float)]
    pred = [np.array([[0, 0, 10, 10, 0.9],     # TP (A)
                      [0, 0, 10, 9, 0.8],      # FP: A is taken (a duplicate)
                      [20, 20, 30, 31, 0.7],   # TP (B)
                      [60, 60, 70, 70, 0.6],   # FP: no overlap
                      [40, 41, 50, 50, 0.5]])]  # TP (C)
    # recall 1/3 1/3 2/3 2/3 1, precision 1 1/2 2/3 2/4 3/5; envelope at the recall steps: 1, 2/3, 3/5
    # AP = (1 + 2/3 + 3/5) / 3 = 34/45
    assert average_precision(pred, gt) == pytest.approx(34 / 45, abs=1e-15)
    assert devkit_voc_eval(pred, gt) == pytest.approx(34 / 45, abs=1e-15)


def _ranked(flags, n_pos=None):
    """One image per detection, unit boxes: flag 1 = the image has a truth box (a TP), 0 = it has none (a FP)."""
    n = len(flags)
    preds = [np.array([[0, 0, 1, 1, 1.0 - k / (n + 1)]]) for k in range(n)]
    truths = [np.array([[0, 0, 1, 1]]) if f else np.zeros((0, 4)) for f in flags]
    truths += [np.array([[0, 0, 1, 1]])] * ((n_pos or sum(flags)) - sum(flags))  # missed truths
    preds += [np.zeros((0, 5))] * (len(truths) - n)
    return preds, truths


def test_envelope_differs_from_sklearn_ap():
    # T F F T T: precision at the TPs 1, 2/4, 3/5; VOC takes the envelope (1, 3/5, 3/5) -> 11/15, sklearn 0.7
    preds, truths = _ranked([1, 0, 0, 1, 1])
    assert average_precision(preds, truths) == pytest.approx(11 / 15)
    assert average_precision_score([1, 0, 0, 1, 1], [5, 4, 3, 2, 1]) == pytest.approx(0.7)
    # a missed truth caps recall at 3/4: (1 + 3/5 + 3/5) / 4
    preds, truths = _ranked([1, 0, 0, 1, 1], n_pos=4)
    assert average_precision(preds, truths) == pytest.approx(2.2 / 4)


def test_iou_threshold_is_strict_like_the_devkit():
    gt = [np.array([[0.0, 0.0, 1.0, 1.0]])]
    exactly_half = [np.array([[0.0, 0.0, 2.0, 1.0, 0.9]])]  # inter 1, union 2: IoU 0.5 exactly
    assert average_precision(exactly_half, gt) == 0.0 == devkit_voc_eval(exactly_half, gt)
    just_above = [np.array([[0.0, 0.0, 1.99, 1.0, 0.9]])]
    assert average_precision(just_above, gt) == 1.0 == devkit_voc_eval(just_above, gt)
    assert average_precision(exactly_half, gt, iou_thr=0.49) == 1.0


def test_no_truth_no_predictions_and_background_images():
    assert np.isnan(average_precision([np.zeros((0, 5))], [np.zeros((0, 4))]))
    assert np.isnan(average_precision([np.array([[0, 0, 1, 1, 0.5]])], [np.zeros((0, 4))]))
    assert average_precision([np.zeros((0, 5))], [np.array([[0, 0, 1, 1]])]) == 0.0
    # a higher-scored box on an image without truth is a FP ranked first: precision 1/2 at recall 1
    preds = [np.array([[0, 0, 1, 1, 0.9]]), np.array([[0, 0, 1, 1, 0.5]])]
    assert average_precision(preds, [np.zeros((0, 4)), np.array([[0, 0, 1, 1]])]) == pytest.approx(0.5)


def test_duplicate_takes_the_best_overlap_even_if_taken():
    # the devkit does not fall back to the next truth box: the second box overlaps A best (A taken) -> FP,
    # although it also overlaps B above 0.5
    gt = [np.array([[0, 0, 10, 10], [0, 0, 10, 12]], dtype=float)]
    pred = [np.array([[0, 0, 10, 10, 0.9], [0, 0, 10, 10.5, 0.8]])]
    assert average_precision(pred, gt) == pytest.approx(0.5) == devkit_voc_eval(pred, gt)


def test_matches_devkit_on_random_scenes():
    rng = np.random.default_rng(0)
    for _ in range(300):
        preds, truths = _scene(rng, int(rng.integers(1, 8)))
        if sum(len(t) for t in truths) == 0:
            continue
        ours, ref = average_precision(preds, truths), devkit_voc_eval(preds, truths)
        assert abs(ours - ref) <= 1e-12, (ours, ref)


def test_ties_do_not_depend_on_order_and_match_sklearn_curve():
    """Whole-image answers (IoU 1, like SIIM study classes): the AP equals voc_ap over sklearn's precision-recall
    curve, which also reads one point per distinct score; reordering tied detections changes nothing."""
    rng = np.random.default_rng(1)
    for _ in range(200):
        n = int(rng.integers(2, 40))
        y = rng.integers(0, 2, n)
        if y.sum() == 0:
            y[0] = 1
        s = rng.choice([0.1, 0.25, 0.5, 0.7, 0.9], n) if rng.random() < 0.7 else rng.uniform(0, 1, n)
        preds = [np.array([[0, 0, 1, 1, v]]) for v in s]
        truths = [np.array([[0, 0, 1, 1]]) if t else np.zeros((0, 4)) for t in y]
        ours = average_precision(preds, truths)
        p, r, _ = precision_recall_curve(y, s)
        assert abs(ours - voc_ap(r[:-1][::-1], p[:-1][::-1])) <= 1e-12
        assert ours >= average_precision_score(y, s) - 1e-12  # the envelope never lowers precision
        perm = rng.permutation(n)
        assert average_precision([preds[k] for k in perm], [truths[k] for k in perm]) == pytest.approx(ours, abs=1e-12)
    # all tied: one point at recall 1 with precision = prevalence
    y = [1, 0, 0, 1, 0, 0, 0, 1]
    assert average_precision([np.array([[0, 0, 1, 1, 0.3]])] * 8,
                             [np.array([[0, 0, 1, 1]]) if t else np.zeros((0, 4)) for t in y]) == pytest.approx(3 / 8)


def test_bad_shapes_are_bad_input():
    with pytest.raises(BadInput, match="shape"):
        average_precision([np.zeros((2, 4))], [np.zeros((1, 4))])
    with pytest.raises(BadInput, match="NaN"):
        average_precision([np.array([[0, 0, 1, 1, np.nan]])], [np.array([[0, 0, 1, 1]])])
    with pytest.raises(BadInput, match="2 prediction lists for 1"):
        average_precision([np.zeros((0, 5))] * 2, [np.zeros((0, 4))])


# --- map50, the registered metric -------------------------------------------------------------------------------

def test_map50_is_the_mean_over_truth_labels_and_ignores_padding():
    truth = [np.array([[0, 0, 10, 10, 0], [20, 20, 30, 30, 1]], dtype=float), np.array([[0, 0, 5, 5, 1]], dtype=float)]
    pred = [np.array([[0, 0, 10, 10, 0.9, 0],       # TP label 0
                      [20, 20, 30, 30, 0.8, 1],     # TP label 1
                      [0, 0, 10, 10, 0.95, 1],      # FP label 1 (the label-0 box), ranked first
                      [0, 0, 0, 0, 0.0, 0],         # padding: score 0
                      [0, 0, 10, 10, 0.99, -1]]),   # padding: label -1
            np.array([[0, 0, 5, 5, 0.7, 1], [50, 50, 60, 60, 0.9, 2]])]  # TP label 1; label 2 has no truth
    # label 0: AP 1. label 1: FP(.95) TP(.8) TP(.7): precision 1/2, 2/3 at recall 1/2, 1 -> (2/3 + 2/3) / 2
    assert map50(truth, pred) == pytest.approx((1 + 2 / 3) / 2)
    padded = np.zeros((2, 5, 6))  # a padded (N, K, 6) array works as well
    padded[0], padded[1, :2] = pred[0], pred[1]
    metric = get_metric("map50")
    assert metric.higher_is_better and metric(truth, padded) == pytest.approx((1 + 2 / 3) / 2)
    assert np.isnan(map50([np.zeros((0, 5))], [np.zeros((0, 6))]))


# --- SIIM ---------------------------------------------------------------------------------------------------------

STUDIES = {"s1_study": "typical", "s2_study": "negative", "s3_study": "typical", "s4_study": "atypical",
           "s5_study": "indeterminate"}
IMAGES = {"i1_image": [(10, 20, 110, 220), (300, 40, 420, 200)], "i2_image": [], "i3_image": [(50, 50, 90, 95)],
          "i4_image": [], "i5_image": [], "i6_image": [(5, 5, 400, 400)]}


def _truths():
    images = {i: [("opacity", 1.0, *b) for b in bs] or [("none", 1.0, 0, 0, 1, 1)] for i, bs in IMAGES.items()}
    studies = {s: [(c, 1.0, 0, 0, 1, 1)] for s, c in STUDIES.items()}
    return images, studies


def test_siim_perfect_submission_scores_one():
    images, studies = _truths()
    out = siim_map(images, images, studies, studies)
    assert out["map"] == 1.0 and set(out["ap"]) == {"negative", "typical", "indeterminate", "atypical", "none",
                                                    "opacity"}
    # every class listed for every study, the true one highest, and 'none' at 0 on opacity images: still perfect
    study_preds = {s: [(k, 0.9 if k == c else 0.05, 0, 0, 1, 1)
                       for k in ("negative", "typical", "indeterminate", "atypical")] for s, c in STUDIES.items()}
    image_preds = {i: g + ([("none", 0.0, 0, 0, 1, 1)] if g[0][0] == "opacity" else []) for i, g in images.items()}
    assert siim_map(image_preds, images, study_preds, studies)["map"] == 1.0


def test_siim_all_none_and_uniform_study_baseline():
    images, studies = _truths()
    image_preds = {i: [("none", 1.0, 0, 0, 1, 1)] for i in IMAGES}
    study_preds = {s: [(k, 0.25, 0, 0, 1, 1) for k in ("negative", "typical", "indeterminate", "atypical")]
                   for s in STUDIES}
    out = siim_map(image_preds, images, study_preds, studies)
    # all tied: each class's AP is its prevalence; no opacity box -> 0; the study prevalences add up to 1
    assert out["ap"]["none"] == pytest.approx(3 / 6) and out["ap"]["opacity"] == 0.0
    assert out["ap"]["typical"] == pytest.approx(2 / 5) and out["ap"]["atypical"] == pytest.approx(1 / 5)
    assert out["map"] == pytest.approx((3 / 6 + 0 + 1) / 6)


def test_siim_none_is_a_whole_image_answer():
    images, studies = _truths()
    base = {i: [("none", 0.6, 0, 0, 1, 1)] for i in IMAGES}
    moved = {i: [Pred("none", 0.6, 7, 7, 9, 9)] for i in IMAGES}  # coordinates of 'none' do not matter
    assert siim_map(base, images, {}, studies)["ap"]["none"] == siim_map(moved, images, {}, studies)["ap"]["none"]
    # 'none' ranked above on the truly empty images only: AP 1; an opacity image said 'none' first: a FP first
    good = {i: [("none", 0.9 if not b else 0.1, 0, 0, 1, 1)] for i, b in IMAGES.items()}
    assert siim_map(good, images, {}, studies)["ap"]["none"] == 1.0
    bad = {**good, "i1_image": [("none", 0.95, 0, 0, 1, 1)]}
    # FP, TP, TP, TP (then the 0.1s, recall already 1): precision 3/4 at full recall, envelope 3/4 everywhere
    assert siim_map(bad, images, {}, studies)["ap"]["none"] == pytest.approx(0.75)
    # missing predictions for ids are allowed (nothing found); unknown ids and labels are errors
    assert siim_map({}, images, {}, studies)["ap"]["opacity"] == 0.0
    with pytest.raises(BadInput, match="not in the truth"):
        siim_map({"zz_image": []}, images, {}, studies)
    with pytest.raises(BadInput, match="label 'typical'"):
        siim_map({"i1_image": [("typical", 0.5, 0, 0, 1, 1)]}, images, {}, studies)


def _frames():
    image_rows = []
    for i, bs in IMAGES.items():
        label = " ".join(f"opacity 1 {x1} {y1} {x2} {y2}" for x1, y1, x2, y2 in bs) or "none 1 0 0 1 1"
        boxes = str([{"x": x1, "y": y1, "width": x2 - x1, "height": y2 - y1} for x1, y1, x2, y2 in bs]) if bs else ""
        image_rows.append({"id": i, "boxes": boxes, "label": label, "StudyInstanceUID": "s"})
    cols = ["Negative for Pneumonia", "Typical Appearance", "Indeterminate Appearance", "Atypical Appearance"]
    names = ["negative", "typical", "indeterminate", "atypical"]
    study = pd.DataFrame([{"id": s, **{c: int(names[k] == cls) for k, c in enumerate(cols)}}
                          for s, cls in STUDIES.items()])
    return pd.DataFrame(image_rows), study


def test_siim_from_frames_scores_submissions():
    truth_image, truth_study = _frames()
    rows = [{"id": s, "PredictionString": format_prediction_string(
        [Pred(k, 0.7 if k == c else 0.1, 0, 0, 1, 1) for k in ("negative", "typical", "indeterminate", "atypical")])}
        for s, c in STUDIES.items()]
    rows += [{"id": i, "PredictionString": format_prediction_string(
        [Pred("opacity", 0.8, *b) for b in bs] or [Pred("none", 0.9, 0, 0, 1, 1)])} for i, bs in IMAGES.items()]
    perfect = pd.DataFrame(rows)
    assert siim_map_from_frames(perfect, truth_image, truth_study)["map"] == 1.0
    as_text = truth_study.astype(str)  # read with dtype=str: "0"/"1" cells work too
    assert siim_map_from_frames(perfect, truth_image, as_text)["map"] == 1.0
    # shift one opacity box so its IoU drops below 0.5: the four boxes are tied at 0.8, so one point with
    # recall 3/4 and precision 3/4 -> AP 9/16
    shifted = perfect.copy()
    shifted.loc[shifted["id"] == "i3_image", "PredictionString"] = "opacity 0.8 80 80 120 125"
    out = siim_map_from_frames(shifted, truth_image, truth_study)
    assert out["ap"]["opacity"] == pytest.approx(9 / 16) and out["map"] == pytest.approx((5 + 9 / 16) / 6)
    # ranked last instead: TP TP TP FP -> precision 1 up to recall 3/4 -> AP 3/4
    shifted.loc[shifted["id"] == "i3_image", "PredictionString"] = "opacity 0.5 80 80 120 125"
    assert siim_map_from_frames(shifted, truth_image, truth_study)["ap"]["opacity"] == pytest.approx(3 / 4)
    empty = perfect.assign(PredictionString="")
    assert siim_map_from_frames(empty, truth_image, truth_study)["map"] == 0.0


def test_siim_from_frames_rejects_bad_tables():
    truth_image, truth_study = _frames()
    sub = pd.DataFrame({"id": ["i1_image"], "PredictionString": ["none 1 0 0 1 1"]})
    with pytest.raises(BadInput, match="lacks column"):
        siim_map_from_frames(sub.rename(columns={"PredictionString": "p"}), truth_image, truth_study)
    with pytest.raises(BadInput, match="neither"):
        siim_map_from_frames(pd.DataFrame({"id": ["x"], "PredictionString": [""]}), truth_image, truth_study)
    with pytest.raises(BadInput, match="more than once"):
        siim_map_from_frames(pd.concat([sub, sub]), truth_image, truth_study)
    two_hot = truth_study.copy()
    two_hot.loc[0, "Atypical Appearance"] = 1
    with pytest.raises(BadInput, match="one-hot"):
        siim_map_from_frames(sub, truth_image, two_hot)

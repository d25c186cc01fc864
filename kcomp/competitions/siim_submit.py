"""SIIM-COVID19 submission rows from kcomp prediction files: study rows from a study classifier, image rows from a
box detector (+ optionally a none/opacity classifier).

Files are recognised by their metadata, in any order:
- task `det`: opacity boxes per test image, in original pixels (from `kcomp tta` / `kcomp wbf`);
- task `cls` with target `study`: per-image probabilities of negative/typical/indeterminate/atypical; a study's
  row is the mean over its images (the index, named in the file's metadata, maps images to studies);
- task `cls` with target `has_opacity` (optional): per-image p(opacity) (class "1").
Rows:
- `<study>_study`: `negative p 0 0 1 1 typical p 0 0 1 1 indeterminate p 0 0 1 1 atypical p 0 0 1 1` (all four:
  the metric is AP per class, so every class should rank every study);
- `<image>_image`: `opacity conf x1 y1 x2 y2 ...` (boxes clipped to the image, 1 decimal) then `none p 0 0 1 1`.
  With a has_opacity file, p(none) = 1 - p(opacity) and, if `none_power` k > 0, each box's conf is multiplied by
  (1 - p(none))^k (k ~ 0.3 in winning solutions). Without one, p(none) = 1 - the image's highest box score (an
  image without boxes gets none 1), and `none_power` is an error (there is no classifier to fuse).
`thresholds` are not used: every class is ranked by the AP metric, so nothing is cut.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from kcomp.errors import BadInput, BadUsage

if TYPE_CHECKING:
    import pandas as pd

    from kcomp.artifacts.boxes import Boxes
    from kcomp.artifacts.predictions import Predictions

STUDY_CLASSES = ("negative", "typical", "indeterminate", "atypical")
BOX_DECIMALS = 1


def _roles(preds: list[Predictions]) -> dict[str, Predictions]:
    roles: dict[str, Predictions] = {}
    for p in preds:
        if p.kind != "test":
            raise BadInput(f"holds {p.kind} predictions; submit needs test predictions (`kcomp tta`)", path=p.source)
        target = p.meta.get("target")
        if p.task == "det":
            role = "det"
        elif p.task == "cls" and target in ("study", "has_opacity"):
            role = target
        else:
            raise BadInput(f"holds {p.task} predictions (target {target!r}); siim-covid19 takes det boxes, cls "
                           "--target study and optionally cls --target has_opacity", path=p.source)
        if role in roles:
            raise BadUsage(f"two {role} prediction files ({roles[role].source}, {p.source}); combine them first "
                           f"(`kcomp {'wbf' if role == 'det' else 'ensemble'}`)")
        roles[role] = p
    for need, how in (("det", "det boxes (`kcomp tta` of a det run, or `kcomp wbf`)"),
                      ("study", "study probabilities (`kcomp tta` of a `train cls --target study` run)")):
        if need not in roles:
            raise BadUsage(f"siim-covid19 needs {how}; got {', '.join(p.source for p in preds)}")
    return roles


def _study_probs(p: Predictions) -> np.ndarray:
    """(N, 4) in STUDY_CLASSES order from the file's classes (whatever order training sorted them in)."""
    classes = [c.lower() for c in p.classes]
    missing = [c for c in STUDY_CLASSES if c not in classes]
    if missing:
        raise BadInput(f"study classes {p.classes} lack {', '.join(missing)}", path=p.source)
    return p.probs()[:, [classes.index(c) for c in STUDY_CLASSES]]


def _opacity_probs(p: Predictions) -> dict[str, float]:
    """image id -> p(opacity): the probability of class 1 ("1", "1.0" or "True")."""
    pos = [i for i, c in enumerate(p.classes) if c.strip().lower() in ("1", "1.0", "true")]
    if len(p.classes) != 2 or len(pos) != 1:
        raise BadInput(f"has_opacity classes {p.classes}: expected two classes, 0 and 1", path=p.source)
    return dict(zip(p.df["id"].astype(str), p.probs()[:, pos[0]].astype(float), strict=True))


def _rounded(v: np.ndarray) -> np.ndarray:
    """round(v, BOX_DECIMALS) element by element: the correctly rounded decimal (np.round scales by 10**d first,
    which rounds 0.15 up where round() gives 0.1)."""
    return np.char.mod(f"%.{BOX_DECIMALS}f", v).astype(np.float64) if len(v) else v


def _clipped(boxes: Boxes, heights: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """(n, 4) x1 y1 x2 y2 clipped to each box's image, corners ordered, rounded to BOX_DECIMALS."""
    img = boxes.image_index()
    lim = np.stack([widths, heights], axis=1).astype(np.float64)[img]
    x = np.clip(boxes.xyxy[:, [0, 2]], 0.0, lim[:, [0]])
    y = np.clip(boxes.xyxy[:, [1, 3]], 0.0, lim[:, [1]])
    out = np.stack([x.min(1), y.min(1), x.max(1), y.max(1)], axis=1)
    return _rounded(out.reshape(-1)).reshape(-1, 4)


def image_rows(det: Predictions, p_opacity: dict[str, float] | None, none_power: float) -> list[tuple[str, str]]:
    """One row per image of the det file, from its flat box arrays (no object per box)."""
    from kcomp.formats.prediction_string import format_prediction_strings

    ids = det.df["id"].astype(str).tolist()
    n = len(ids)
    boxes = det.boxes.select(det.boxes.score > 0)
    img = boxes.image_index()
    if p_opacity is not None:
        missing = [i for i in ids if i not in p_opacity]
        if missing:
            raise BadInput(f"image {missing[0]!r} of {det.source} has no has_opacity prediction")
        p_op = [float(np.clip(p_opacity[i], 0.0, 1.0)) for i in ids]
        factor = np.array([p ** none_power if none_power else 1.0 for p in p_op])  # (1 - p_none)^k
        p_none = 1.0 - np.array(p_op)
    else:
        factor = np.ones(n)
        best = np.zeros(n)
        np.maximum.at(best, img, boxes.score)
        p_none = 1.0 - best
    order = np.lexsort((-boxes.score, img))  # best first; stable, so equal scores keep the file's order
    xyxy = _clipped(boxes, det.df["height"].to_numpy(), det.df["width"].to_numpy())[order]
    img = img[order]
    conf = boxes.score[order] * factor[img]
    kept = (xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1])
    group_img = np.concatenate([img[kept], np.arange(n)])  # each image's boxes, then its `none` group
    values = np.concatenate([np.column_stack([conf[kept], xyxy[kept]]),
                             np.column_stack([p_none, np.zeros((n, 2)), np.ones((n, 2))])])
    labels = np.where(np.arange(len(group_img)) < kept.sum(), "opacity", "none")
    perm = np.argsort(group_img, kind="stable")
    offsets = np.concatenate([[0], np.cumsum(np.bincount(group_img, minlength=n))])
    texts = format_prediction_strings(labels[perm], values[perm], offsets)
    return [(f"{i}_image", t) for i, t in zip(ids, texts, strict=True)]


def study_rows(study: Predictions, image_ids: list[str], index: Any) -> list[tuple[str, str]]:
    from kcomp.formats.prediction_string import Pred, format_prediction_string

    df = index.df
    if "study_id" not in df.columns:
        raise BadInput("the index has no study_id column (not a siim-covid19 index?)", path=index.source)
    study_of = dict(zip(df["id"].astype(str), df["study_id"].astype(str), strict=True))
    unknown = [i for i in list(study.df["id"].astype(str)) + image_ids if i not in study_of]
    if unknown:
        raise BadInput(f"image {unknown[0]!r} is not in the index {index.source}", path=study.source)
    probs = _study_probs(study)
    by_study: dict[str, list[np.ndarray]] = {}
    for img, p in zip(study.df["id"].astype(str), probs, strict=True):
        by_study.setdefault(study_of[img], []).append(p)
    out = []
    for s in dict.fromkeys(study_of[i] for i in image_ids):  # the det file's studies, first-seen order
        if s not in by_study:
            raise BadInput(f"study {s!r} (of the det file's images) has no image in the study predictions",
                           path=study.source)
        mean = np.mean(by_study[s], axis=0)
        out.append((f"{s}_study", format_prediction_string(
            [Pred(c, float(v), 0, 0, 1, 1) for c, v in zip(STUDY_CLASSES, mean, strict=True)])))
    return out


def submit_siim(preds: list[Predictions], *, thresholds: dict[str, Any] | None = None,
                none_power: float = 0.0) -> pd.DataFrame:
    """`id`, `PredictionString`: one row per test study and per test image of the det file."""
    import pandas as pd

    if none_power is None:
        none_power = 0.0
    if not 0.0 <= none_power <= 10.0:
        raise BadUsage(f"--none-power {none_power}: expected a number in [0, 10] (winners used ~0.3)")
    roles = _roles(preds)
    det, study = roles["det"], roles["study"]
    opacity = roles.get("has_opacity")
    if none_power and opacity is None:
        raise BadUsage("--none-power needs a has_opacity prediction file (`train cls --target has_opacity`)")
    image_ids = list(det.df["id"].astype(str))
    rows = study_rows(study, image_ids, study.index("needed to map images to studies")) + \
        image_rows(det, _opacity_probs(opacity) if opacity is not None else None, none_power)
    return pd.DataFrame(rows, columns=["id", "PredictionString"])

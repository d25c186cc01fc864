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


def _box(b: Any, h: float, w: float) -> tuple[float, float, float, float]:
    x1, x2 = sorted((min(max(float(b["x1"]), 0.0), w), min(max(float(b["x2"]), 0.0), w)))
    y1, y2 = sorted((min(max(float(b["y1"]), 0.0), h), min(max(float(b["y2"]), 0.0), h)))
    return tuple(round(v, BOX_DECIMALS) for v in (x1, y1, x2, y2))  # type: ignore[return-value]


def image_rows(det: Predictions, p_opacity: dict[str, float] | None, none_power: float) -> list[tuple[str, str]]:
    from kcomp.formats.prediction_string import Pred, format_prediction_string

    out = []
    for r in det.df[["id", "boxes", "height", "width"]].itertuples(index=False):
        img = str(r.id)
        boxes = [b for b in r.boxes if float(b["score"]) > 0]
        if p_opacity is not None:
            if img not in p_opacity:
                raise BadInput(f"image {img!r} of {det.source} has no has_opacity prediction")
            p_op = float(np.clip(p_opacity[img], 0.0, 1.0))
            factor = p_op ** none_power if none_power else 1.0  # (1 - p_none)^k
            p_none = 1.0 - p_op
        else:
            factor = 1.0
            p_none = 1.0 - max((float(b["score"]) for b in boxes), default=0.0)
        clipped = [(float(b["score"]) * factor, _box(b, float(r.height), float(r.width)))
                   for b in sorted(boxes, key=lambda b: -float(b["score"]))]
        preds = [Pred("opacity", s, *xyxy) for s, xyxy in clipped if xyxy[2] > xyxy[0] and xyxy[3] > xyxy[1]]
        preds.append(Pred("none", p_none, 0, 0, 1, 1))
        out.append((f"{img}_image", format_prediction_string(preds)))
    return out


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

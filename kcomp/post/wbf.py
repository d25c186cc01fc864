"""Box fusion across models, folds and TTA views. ensemble-boxes is the reference implementation used here;
coordinates are normalised per image for it and mapped back to pixels afterwards."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from kcomp.errors import BadUsage

if TYPE_CHECKING:
    import pandas as pd

METHODS = ("wbf", "nms", "soft_nms")
CONF_TYPES = ("avg", "max", "box_and_model_avg", "absent_model_aware_avg")


def fuse_boxes(frames: Sequence[pd.DataFrame], *, method: str = "wbf", iou_thr: float = 0.55,
               skip_box_thr: float = 0.01, weights: Sequence[float] | None = None, conf_type: str = "avg",
               sigma: float = 0.5) -> pd.DataFrame:
    """Frames share ids (checked by the caller); returns the first frame's rows with fused `boxes`."""
    import ensemble_boxes as eb

    if method not in METHODS:
        raise BadUsage(f"--method {method}: choose one of {', '.join(METHODS)}")
    if conf_type not in CONF_TYPES:
        raise BadUsage(f"--conf-type {conf_type}: choose one of {', '.join(CONF_TYPES)}")
    if not 0 < iou_thr <= 1:
        raise BadUsage(f"--iou {iou_thr}: must be in (0, 1]")
    out = frames[0].copy()
    lookups = [f.set_index("id")["boxes"] for f in frames]
    fused = []
    for img_id, h, w in zip(out["id"], out["height"], out["width"], strict=True):
        scale = np.array([w, h, w, h], dtype=np.float64)
        boxes, scores, labels = [], [], []
        for lk in lookups:
            b = list(lk[img_id])
            arr = np.array([[d["x1"], d["y1"], d["x2"], d["y2"]] for d in b], dtype=np.float64).reshape(-1, 4)
            boxes.append(np.clip(arr / scale, 0.0, 1.0))
            scores.append(np.array([d["score"] for d in b], dtype=np.float64))
            labels.append(np.array([d["label"] for d in b], dtype=np.float64))
        if method == "wbf":
            fb, fs, fl = eb.weighted_boxes_fusion(boxes, scores, labels, weights=weights, iou_thr=iou_thr,
                                                  skip_box_thr=skip_box_thr, conf_type=conf_type)
        elif method == "nms":
            fb, fs, fl = eb.nms(boxes, scores, labels, weights=weights, iou_thr=iou_thr)
        else:
            fb, fs, fl = eb.soft_nms(boxes, scores, labels, weights=weights, iou_thr=iou_thr, sigma=sigma,
                                     thresh=skip_box_thr)
        fused.append(_to_records(np.asarray(fb).reshape(-1, 4) * scale, fs, fl))
    out["boxes"] = fused
    return out


def _to_records(boxes: np.ndarray, scores: Any, labels: Any) -> list[dict[str, float | int]]:
    return [{"x1": float(b[0]), "y1": float(b[1]), "x2": float(b[2]), "y2": float(b[3]), "score": float(s),
             "label": int(lab)} for b, s, lab in zip(boxes, scores, labels, strict=True)]

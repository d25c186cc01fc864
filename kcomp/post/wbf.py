"""Box fusion across models, folds and TTA views. Coordinates are normalised per image for fusion and mapped back to
pixels afterwards. WBF runs by default on `kcomp.post._wbf_fast` (all images in one numba pass, same output as
ensemble-boxes); `impl="reference"` calls ensemble-boxes image by image, as do NMS and soft-NMS."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from kcomp.errors import BadInput, BadUsage

if TYPE_CHECKING:
    import pandas as pd

METHODS = ("wbf", "nms", "soft_nms")
CONF_TYPES = ("avg", "max", "box_and_model_avg", "absent_model_aware_avg")
IMPLS = ("fast", "reference")
BOX_KEYS = ("x1", "y1", "x2", "y2", "score", "label")


def fuse_boxes(frames: Sequence[pd.DataFrame], *, method: str = "wbf", iou_thr: float = 0.55,
               skip_box_thr: float = 0.01, weights: Sequence[float] | None = None, conf_type: str = "avg",
               sigma: float = 0.5, impl: str = "fast") -> pd.DataFrame:
    """Frames share ids (checked by the caller); returns the first frame's rows with fused `boxes`.

    `impl` picks the WBF code: "fast" (default) or "reference" (ensemble-boxes); both give the same rows."""
    if method not in METHODS:
        raise BadUsage(f"--method {method}: choose one of {', '.join(METHODS)}")
    if conf_type not in CONF_TYPES:
        raise BadUsage(f"--conf-type {conf_type}: choose one of {', '.join(CONF_TYPES)}")
    if not 0 < iou_thr <= 1:
        raise BadUsage(f"--iou {iou_thr}: must be in (0, 1]")
    if impl not in IMPLS:
        raise BadUsage(f"impl {impl!r}: choose one of {', '.join(IMPLS)}")
    if weights is not None and len(weights) != len(frames):
        raise BadUsage(f"{len(weights)} weight(s) for {len(frames)} prediction file(s)")
    if method == "wbf" and impl == "fast":
        return _fuse_fast(frames, iou_thr=iou_thr, skip_box_thr=skip_box_thr, weights=weights, conf_type=conf_type)
    import ensemble_boxes as eb

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


def _fuse_fast(frames: Sequence[pd.DataFrame], *, iou_thr: float, skip_box_thr: float,
               weights: Sequence[float] | None, conf_type: str) -> pd.DataFrame:
    """Every frame's boxes flattened once into arrays, fused for all images in one call, split back per image."""
    import pandas as pd

    from kcomp.post._wbf_fast import wbf_flat

    out = frames[0].copy()
    n_img = len(out)
    scale = np.stack([out["width"], out["height"], out["width"], out["height"]], axis=1).astype(np.float64)
    parts = []
    for t, f in enumerate(frames):
        pos = pd.Index(f["id"]).get_indexer(out["id"])
        if (pos < 0).any():
            raise BadInput(f"prediction file {t + 1} lacks id {out['id'].iloc[int(np.argmax(pos < 0))]!r}")
        values, counts = _flatten(f["boxes"].to_numpy()[pos])
        image = np.repeat(np.arange(n_img), counts)
        parts.append((values, image, np.full(len(image), t)))
    values = np.concatenate([p[0] for p in parts])
    image = np.concatenate([p[1] for p in parts])
    boxes = np.clip(values[:, :4] / scale[image], 0.0, 1.0)
    fb, fs, fl, fi = wbf_flat(boxes, values[:, 4], values[:, 5], np.concatenate([p[2] for p in parts]), image,
                              len(frames), weights=weights, iou_thr=iou_thr, skip_box_thr=skip_box_thr,
                              conf_type=conf_type)
    fb = (fb * scale[fi]).tolist()
    fs, fl = fs.tolist(), fl.astype(np.int64).tolist()
    ends = np.cumsum(np.bincount(fi, minlength=n_img)).tolist()
    fused, start = [], 0
    for end in ends:
        fused.append([{"x1": b[0], "y1": b[1], "x2": b[2], "y2": b[3], "score": s, "label": lab}
                      for b, s, lab in zip(fb[start:end], fs[start:end], fl[start:end])])
        start = end
    out["boxes"] = fused
    return out


def _flatten(cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lists of box dicts (one per image) -> (N,6) float64 x1,y1,x2,y2,score,label and boxes per image, converted
    by pyarrow in C, faster than a Python loop over the dicts (`benchmarks/bench_wbf.py`)."""
    import pyarrow as pa

    typ = pa.list_(pa.struct([(k, pa.float64()) for k in BOX_KEYS]))
    try:
        arr = pa.array([[] if c is None else c for c in cells], type=typ)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise BadInput(f"boxes must be lists of {{{', '.join(BOX_KEYS)}}} dicts of numbers: {e}") from None
    flat = arr.flatten()
    cols = [flat.field(k) for k in BOX_KEYS]
    if any(c.null_count for c in cols):
        raise BadInput(f"a box lacks one of {', '.join(BOX_KEYS)}")
    values = np.stack([c.to_numpy(zero_copy_only=False) for c in cols], axis=1) if len(flat) else np.zeros((0, 6))
    return values, np.diff(arr.offsets.to_numpy())


def _to_records(boxes: np.ndarray, scores: Any, labels: Any) -> list[dict[str, float | int]]:
    return [{"x1": float(b[0]), "y1": float(b[1]), "x2": float(b[2]), "y2": float(b[3]), "score": float(s),
             "label": int(lab)} for b, s, lab in zip(boxes, scores, labels, strict=True)]

"""Task `det`: object detection with EfficientDet (effdet), e.g. SIIM-COVID19 opacities; mAP@0.5 by default.

Index rows carry `boxes` (list of {x1, y1, x2, y2, label} in ORIGINAL pixels; empty = no object), `height`,
`width`. Coordinates, stage by stage:
- effdet trains on yxyx boxes in input pixels with 1-based classes (`DetDataset` builds them, `DetLoss` eats them);
- everything the task passes around internally (`predict`, `targets_array`, `predict_rows`, `average`) is xyxy in
  normalised [0, 1] image coordinates with 0-based labels: ensemble-boxes needs them, IoU does not change under a
  per-axis scaling, and an image's original size is only needed at the end;
- prediction files (`frame`) hold boxes in ORIGINAL pixels, scaled back with each row's width and height.
TTA: the flip views' boxes are mapped back exactly (`kcomp.infer.box_tta`) and fused per image with weighted boxes
fusion (what competitors did); several folds/runs are fused the same way (`average`). `kcomp wbf` can fuse the
resulting files further with other settings.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from kcomp.errors import BadInput
from kcomp.tasks import TASKS

if TYPE_CHECKING:
    import pandas as pd

    from kcomp.artifacts.index import IndexTable

FUSE_IOU = 0.55  # IoU at which TTA views' / models' boxes are fused
FUSE_SKIP = 0.001  # boxes scoring below this are dropped before fusion (low boxes still add recall to mAP)
VIEW_COL = 6  # predict's 7th column: the TTA view a box came from


@TASKS.register("det")
class DetTask:
    """Object detection (EfficientDet via effdet); boxes with scores, mAP@0.5 by default"""

    name = "det"
    default_metric = "map50"
    supports_mix = False

    def setup(self, table: IndexTable, cfg: dict[str, Any]) -> dict[str, Any]:
        from kcomp.models.det import det_config

        if "boxes" not in table.df.columns:
            raise BadInput("missing column boxes: not a detection index (made by `kcomp prep siim-covid19`?)",
                           path=table.source)
        classes = _classes(table)
        det_config(cfg["model"], len(classes), int(cfg["img_size"]))  # model name and input size, checked early
        return {"classes": list(classes)}

    @staticmethod
    def _label_lookup(classes: list[str]) -> dict[str, int]:
        return {**{str(i): i for i in range(len(classes))}, **{c: i for i, c in enumerate(classes)}}

    def truth(self, rows: pd.DataFrame, setup: dict[str, Any], size: int | None = None) -> list[np.ndarray]:
        """Each row's boxes as (g, 5) [x1, y1, x2, y2, label]: at `size` px (square input), or original px."""
        from kcomp.data.det_dataset import box_rows, clip_boxes, scaled_boxes

        lookup = self._label_lookup(setup["classes"])
        out = []
        for r in rows[["boxes", "height", "width"]].itertuples(index=False):
            h, w = int(r.height), int(r.width)
            out.append(clip_boxes(box_rows(r.boxes, lookup), h, w) if size is None
                       else scaled_boxes(r.boxes, lookup, h, w, size))
        return out

    def dataset(self, table: IndexTable, rows: pd.DataFrame, cfg: dict[str, Any], setup: dict[str, Any], *,
                train: bool, with_targets: bool = True) -> Any:
        from kcomp.data.det_dataset import DetDataset, det_train_transform

        size = int(cfg["img_size"])
        files = [table.file(p) for p in rows["path"]]
        boxes = self.truth(rows, setup, size) if with_targets else [np.zeros((0, 5), np.float32)] * len(rows)
        return DetDataset(files, boxes, size, det_train_transform(cfg["aug"]) if train else None)

    def build_model(self, cfg: dict[str, Any], setup: dict[str, Any], *, weights: str | None = None
                    ) -> torch.nn.Module:
        from kcomp.models.det import create_det_model

        return create_det_model(cfg["model"], len(setup["classes"]), int(cfg["img_size"]), weights=weights)

    def loss(self, cfg: dict[str, Any], setup: dict[str, Any]) -> Any:
        from kcomp.models.det import DetLoss, det_config

        return DetLoss(det_config(cfg["model"], len(setup["classes"]), int(cfg["img_size"])))

    def predict(self, model: torch.nn.Module, x: torch.Tensor, tta: int) -> torch.Tensor:
        """(B, V*100, 7) [x1, y1, x2, y2, score, label, view] normalised to [0, 1], each view's boxes mapped back to
        the original orientation; padding rows have score 0 and label -1. Views are fused later, on the host."""
        from kcomp.infer.box_tta import unflip_boxes
        from kcomp.infer.tta import flips

        views = flips(x, tta)
        batch = views[0] if len(views) == 1 else torch.cat(views)
        det = model.decode(*model(batch)).float()  # (V*B, K, 6) in input pixels
        h, w = x.shape[-2:]
        det = det.view(len(views), x.shape[0], det.shape[1], 6)
        scale = det.new_tensor([w, h, w, h])
        out = []
        for v in range(len(views)):
            boxes = unflip_boxes(det[v, ..., :4], v, (h, w)) / scale
            view = torch.full_like(det[v, ..., :1], float(v))
            out.append(torch.cat([boxes, det[v, ..., 4:6], view], -1))
        return torch.cat(out, 1)

    def fuse_views(self, preds: np.ndarray) -> list[np.ndarray]:
        """Per image, the (k, 6) boxes of its TTA views fused by WBF (one view: its boxes, padding dropped)."""
        return [_fuse([img[img[:, VIEW_COL] == v, :6] for v in np.unique(img[:, VIEW_COL])])
                for img in preds]

    def score(self, metric: str, preds: np.ndarray, targets: np.ndarray) -> float:
        from kcomp.metrics import get_metric

        return float(get_metric(metric).fn(list(targets), self.fuse_views(preds)))

    def predict_rows(self, models: Iterable[torch.nn.Module], table: IndexTable, rows: pd.DataFrame,
                     cfg: dict[str, Any], setup: dict[str, Any], *, tta: int, device: torch.device,
                     dtype: torch.dtype | None, batch_size: int, workers: int, with_targets: bool,
                     labels: Sequence[str]) -> list[list[np.ndarray]]:
        """Per model, per row, (k, 6) [x1, y1, x2, y2, score, label] normalised to [0, 1], TTA views fused. All
        models predict each batch as it is read (boxes are small; decoding full-size radiographs is not)."""
        from kcomp.infer.predict import inference_loader, predict_loader, shared_label

        ds = self.dataset(table, rows, cfg, setup, train=False, with_targets=False)
        dl = inference_loader(ds, batch_size=batch_size, workers=workers, device=device)
        return [self.fuse_views(p) for p in predict_loader(list(models), dl, self, tta=tta, device=device,
                                                           dtype=dtype, label=shared_label(labels))]

    def average(self, preds: Iterable[list[np.ndarray]]) -> list[np.ndarray]:
        """Several models' boxes fused image by image with WBF (equal weights); boxes are small, so the models'
        lists are all kept for the fusion."""
        preds = list(preds)
        if len(preds) == 1:
            return preds[0]
        return [_fuse([p[i] for p in preds]) for i in range(len(preds[0]))]

    def frame(self, rows: pd.DataFrame, preds: list[np.ndarray], setup: dict[str, Any], *, with_targets: bool
              ) -> pd.DataFrame:
        """`boxes` as {x1, y1, x2, y2, score, label} records in ORIGINAL pixels, best first."""
        import pandas as pd

        heights, widths = rows["height"].to_numpy(), rows["width"].to_numpy()
        boxes = []
        for p, h, w in zip(preds, heights, widths, strict=True):
            px = p[:, :4] * np.array([w, h, w, h], dtype=np.float64)
            boxes.append([{"x1": float(b[0]), "y1": float(b[1]), "x2": float(b[2]), "y2": float(b[3]),
                           "score": float(s), "label": int(lab)}
                          for b, s, lab in zip(px, p[:, 4], p[:, 5], strict=True)])
        return pd.DataFrame({"id": rows["id"].to_numpy(), "boxes": boxes, "height": heights, "width": widths})

    def oof_score(self, metric: str, frame: pd.DataFrame, table: IndexTable) -> float:
        """The metric of the frame's boxes against the index's, both in original pixels."""
        from kcomp.metrics import get_metric

        setup = {"classes": _classes(table)}
        rows = table.rows_for(frame["id"])
        return float(get_metric(metric).fn(self.truth(rows, setup), [_records(b) for b in frame["boxes"]]))

    def tune_thresholds(self, preds: Any, **options: Any) -> dict[str, Any]:
        """mAP ranks boxes by score, so no score threshold can raise it: record the OOF score and say so."""
        table = preds.index("needed for the true boxes")
        metric = preds.meta.get("metric") or self.default_metric
        return {"task": self.name, "method": "none", "classes": {c: None for c in preds.classes},
                "metric": metric, "score": self.oof_score(metric, preds.df, table), "oof": preds.source,
                "note": "mAP ranks boxes by score; no threshold raises it, so every box is submitted"}


def _classes(table: IndexTable) -> list[str]:
    """The index's classes metadata, else the labels its boxes use."""
    classes = table.classes or sorted({str(b["label"]) for bs in table.df["boxes"] if bs is not None for b in bs})
    if not classes:
        raise BadInput("no box classes: the index has no classes metadata and no boxes", path=table.source)
    return list(classes)


def _records(boxes: Any) -> np.ndarray:
    """A prediction file's box records -> (k, 6) [x1, y1, x2, y2, score, label]."""
    rows = [[b["x1"], b["y1"], b["x2"], b["y2"], b["score"], b["label"]] for b in boxes]
    return np.asarray(rows, dtype=np.float64).reshape(-1, 6)


def _fuse(parts: list[np.ndarray]) -> np.ndarray:
    """WBF of several (k, 6) normalised box sets of one image; padding (score <= 0 or label < 0) and boxes that
    clipping flattened to zero area are dropped."""
    parts = [p[(p[:, 4] > 0) & (p[:, 5] >= 0) & (p[:, 2] > p[:, 0]) & (p[:, 3] > p[:, 1])] for p in parts]
    if len(parts) == 1:
        return parts[0].astype(np.float32)
    if not any(len(p) for p in parts):
        return np.zeros((0, 6), np.float32)
    from kcomp.post._wbf_fast import weighted_boxes_fusion

    boxes, scores, labels = weighted_boxes_fusion(
        [np.clip(p[:, :4], 0, 1) for p in parts], [p[:, 4] for p in parts], [p[:, 5] for p in parts],
        iou_thr=FUSE_IOU, skip_box_thr=FUSE_SKIP, conf_type="avg")
    return np.column_stack([np.asarray(boxes).reshape(-1, 4), scores, labels]).astype(np.float32)

"""Task `det`: object detection with EfficientDet (effdet), e.g. SIIM-COVID19 opacities; mAP@0.5 by default.

Index rows carry `boxes` (list of {x1, y1, x2, y2, label} in ORIGINAL pixels; empty = no object), `height`,
`width`. Coordinates, stage by stage:
- effdet trains on yxyx boxes in input pixels with 1-based classes (`DetDataset` builds them, the training loader's
  `AnchorCollate` labels the anchors from them, `DetLoss` eats the labels);
- everything the task passes around internally (`predict`, `targets_array`, `predict_rows`, `average`) is xyxy in
  normalised [0, 1] image coordinates with 0-based labels: ensemble-boxes needs them, IoU does not change under a
  per-axis scaling, and an image's original size is only needed at the end. Fused boxes travel as one `Boxes`
  container for all images (flat arrays), not as a Python object per box;
- prediction files (`frame`) hold boxes in ORIGINAL pixels, scaled back with each row's width and height.
TTA: the flip views' boxes are mapped back exactly (`kcomp.infer.box_tta`) and fused with weighted boxes fusion
(what competitors did), every image in one kernel call; several folds/runs are fused the same way (`average`).
`kcomp wbf` can fuse the resulting files further with other settings.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from kcomp.errors import BadInput
from kcomp.tasks import TASKS
from kcomp.tasks.base import Task

if TYPE_CHECKING:
    import pandas as pd

    from kcomp.artifacts.boxes import Boxes
    from kcomp.artifacts.index import IndexTable
    from kcomp.models.pretrained import Init
    from kcomp.tasks.options import TrainOptions

FUSE_IOU = 0.55  # IoU at which TTA views' / models' boxes are fused
FUSE_SKIP = 0.001  # boxes scoring below this are dropped before fusion (low boxes still add recall to mAP)
VIEW_COL = 6  # predict's 7th column: the TTA view a box came from


@TASKS.register("det")
class DetTask(Task[list[np.ndarray]]):
    """Object detection (EfficientDet via effdet); boxes with scores, mAP@0.5 by default"""

    name = "det"
    default_metric = "map50"
    metrics = ("map50",)  # those --metric may name
    supports_mix = False
    one_model_at_a_time = False

    def setup(self, table: IndexTable, opts: TrainOptions) -> dict[str, Any]:
        from kcomp.models.det import det_config

        if "boxes" not in table.df.columns:
            raise BadInput("missing column boxes: not a detection index (made by `kcomp prep siim-covid19`?)",
                           path=table.source)
        classes = _classes(table)
        det_config(opts.model, len(classes), opts.img_size)  # model name and input size, checked early
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

    def dataset(self, table: IndexTable, rows: pd.DataFrame, opts: TrainOptions, setup: dict[str, Any], *,
                train: bool, with_targets: bool = True) -> Any:
        from kcomp.data.det_dataset import DetDataset, det_train_transform

        size = opts.img_size
        files = [table.file(p) for p in rows["path"]]
        boxes = self.truth(rows, setup, size) if with_targets else [np.zeros((0, 5), np.float32)] * len(rows)
        return DetDataset(files, boxes, size, det_train_transform(opts.aug) if train else None)

    def build_model(self, opts: TrainOptions, setup: dict[str, Any], *, init: Init | None = None
                    ) -> torch.nn.Module:
        from kcomp.models.det import create_det_model

        return create_det_model(opts.model, len(setup["classes"]), opts.img_size, init=init)

    def loss(self, opts: TrainOptions, setup: dict[str, Any]) -> Any:
        from kcomp.models.det import det_config
        from kcomp.models.losses import DetLoss

        return DetLoss(det_config(opts.model, len(setup["classes"]), opts.img_size))

    def train_collate(self, opts: TrainOptions, setup: dict[str, Any]) -> Any:
        """Anchors labelled from each batch's boxes in the loader's workers, on the CPU, as effdet's own training
        loader does: on the device, effdet's matcher reads back a few sizes per image (boolean indexing, tensors
        built from host values), and the GPU would wait for the host at every step."""
        from kcomp.data.det_dataset import AnchorCollate
        from kcomp.models.det import det_config

        return AnchorCollate(det_config(opts.model, len(setup["classes"]), opts.img_size))

    def predict(self, model: torch.nn.Module, x: torch.Tensor, tta: int, scales: Sequence[float] = (1.0,)
                ) -> torch.Tensor:
        """(B, S*V*100, 7) [x1, y1, x2, y2, score, label, view] normalised to [0, 1]: per scale S, the V flip views
        one batch at a time (`per_view`), each view's boxes mapped back to the original orientation and normalised
        by its own size (which undoes the scale exactly); padding rows have score 0 and label -1. Views are fused
        later, on the host."""
        from kcomp.infer.tta import at_scales

        out = []
        for i, xs in enumerate(at_scales(x, scales)):
            out.append(self._views(model, xs, tta, first=i * tta))
        return out[0] if len(out) == 1 else torch.cat(out, 1)

    @staticmethod
    def _views(model: torch.nn.Module, x: torch.Tensor, tta: int, first: int) -> torch.Tensor:
        from kcomp.infer.box_tta import unflip_boxes
        from kcomp.infer.tta import flips, per_view

        views = flips(x, tta)
        det = per_view(lambda v: model.decode(*model(v)).float(), views)  # (V*B, K, 6) in (padded) input pixels
        h, w = int(x.shape[-2]), int(x.shape[-1])
        det = det.view(len(views), x.shape[0], det.shape[1], 6)
        scale = det.new_tensor([w, h, w, h])
        out = []
        for v in range(len(views)):
            boxes = unflip_boxes(det[v, ..., :4].minimum(scale), v, (h, w)) / scale  # clipped to the view
            view = torch.full_like(det[v, ..., :1], float(first + v))
            out.append(torch.cat([boxes, det[v, ..., 4:6], view], -1))
        return torch.cat(out, 1)

    def fuse_views(self, preds: np.ndarray) -> Boxes:
        """`predict`'s (N, V*K, 7) rows as each image's boxes, its TTA views fused by WBF (one view: its boxes).
        Padding (score <= 0 or label < 0) and boxes without area are dropped first."""
        from kcomp.artifacts.boxes import Boxes

        n = len(preds)
        if n == 0:
            return Boxes.empty(0)
        rows = preds.reshape(-1, 7)
        ok = (rows[:, 4] > 0) & (rows[:, 5] >= 0) & (rows[:, 2] > rows[:, 0]) & (rows[:, 3] > rows[:, 1])
        image = np.repeat(np.arange(n), preds.shape[1])[ok]
        rows = rows[ok].astype(np.float64)
        if len(np.unique(preds[..., VIEW_COL])) <= 1:
            return Boxes.from_flat(image, n, rows[:, :4], rows[:, 4], rows[:, 5])
        from kcomp.post.wbf import fuse_flat

        return _as_float32(fuse_flat(np.clip(rows[:, :4], 0, 1), rows[:, 4], rows[:, 5],
                                     rows[:, VIEW_COL].astype(np.int64), image, int(preds[..., VIEW_COL].max()) + 1,
                                     n, iou_thr=FUSE_IOU, skip_box_thr=FUSE_SKIP))

    def score(self, metric: str, preds: np.ndarray, targets: np.ndarray) -> float:
        from kcomp.metrics import get_metric

        return float(get_metric(metric).fn(list(targets), self.fuse_views(preds).rows()))

    def predict_rows(self, models: Iterable[torch.nn.Module], table: IndexTable, rows: pd.DataFrame,
                     opts: TrainOptions, setup: dict[str, Any], *, tta: int, device: torch.device,
                     dtype: torch.dtype | None, batch_size: int, workers: int, with_targets: bool,
                     labels: Sequence[str], out_size: tuple[int, int] | None = None,
                     scales: Sequence[float] = (1.0,)) -> Iterator[Boxes]:
        """Per model, the rows' boxes normalised to [0, 1], TTA views fused. The models predict each batch together
        as it is read (boxes are small; decoding full-size radiographs is not), as many as `predict_in_groups`
        holds at once."""
        from kcomp.infer.predict import inference_loader, predict_in_groups

        ds = self.dataset(table, rows, opts, setup, train=False, with_targets=False)
        dl = inference_loader(ds, batch_size=batch_size, workers=workers, device=device)
        yield from (self.fuse_views(p) for p in predict_in_groups(models, dl, self, tta=tta, device=device,
                                                                  dtype=dtype, labels=labels,
                                                                  scales=scales))

    def average(self, preds: Iterable[Boxes]) -> Boxes:
        """Several models' boxes fused with WBF (equal weights), every image in one call; boxes are small, so the
        models' boxes are all kept for the fusion."""
        preds = list(preds)
        if len(preds) == 1:
            return preds[0]
        from kcomp.post.wbf import fuse_normalised

        return _as_float32(fuse_normalised(preds, iou_thr=FUSE_IOU, skip_box_thr=FUSE_SKIP))

    def frame(self, rows: pd.DataFrame, preds: Boxes, setup: dict[str, Any], *, with_targets: bool
              ) -> pd.DataFrame:
        """`boxes`: per row a (k, 6) [x1, y1, x2, y2, score, label] array in ORIGINAL pixels, best first (what
        `write_predictions` and `oof_score` take; one object per image, none per box)."""
        import pandas as pd

        from kcomp.artifacts.boxes import Boxes

        heights, widths = rows["height"].to_numpy(), rows["width"].to_numpy()
        scale = np.stack([widths, heights, widths, heights], axis=1).astype(np.float64)
        px = Boxes(preds.offsets, preds.xyxy * scale[preds.image_index()], preds.score, preds.label)
        return pd.DataFrame({"id": rows["id"].to_numpy(), "boxes": px.column(), "height": heights, "width": widths})

    def oof_score(self, metric: str, frame: pd.DataFrame, table: IndexTable) -> float:
        """The metric of the frame's boxes (per row a (k, 6) array, as `frame` makes) against the index's, both in
        original pixels."""
        from kcomp.metrics import get_metric

        setup = {"classes": _classes(table)}
        rows = table.rows_for(frame["id"])
        return float(get_metric(metric).fn(self.truth(rows, setup), list(frame["boxes"])))

    def tune_thresholds(self, preds: Any, **options: Any) -> dict[str, Any]:
        """mAP ranks boxes by score, so no score threshold can raise it: record the OOF score and say so."""
        table = preds.index("needed for the true boxes")
        metric = preds.meta.get("metric") or self.default_metric
        frame = preds.df.assign(boxes=preds.boxes.column())
        return {"task": self.name, "method": "none", "classes": {c: None for c in preds.classes},
                "metric": metric, "score": self.oof_score(metric, frame, table), "oof": preds.source,
                "note": "mAP ranks boxes by score; no threshold raises it, so every box is submitted"}


def _classes(table: IndexTable) -> list[str]:
    """The index's classes metadata, else the labels its boxes use."""
    classes = table.classes or sorted({str(b["label"]) for bs in table.df["boxes"] if bs is not None for b in bs})
    if not classes:
        raise BadInput("no box classes: the index has no classes metadata and no boxes", path=table.source)
    return list(classes)


def _as_float32(boxes: Boxes) -> Boxes:
    """Fused coordinates and scores rounded to float32, as the task has always handed them on."""
    from kcomp.artifacts.boxes import Boxes

    return Boxes(boxes.offsets, boxes.xyxy.astype(np.float32).astype(np.float64),
                 boxes.score.astype(np.float32).astype(np.float64), boxes.label)

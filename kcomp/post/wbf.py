"""Box fusion across models, folds and TTA views, on `Boxes` containers: every image's boxes in one kernel call.

Coordinates are normalised per image for fusion (ensemble-boxes' convention) and mapped back to pixels afterwards.
WBF runs on `kcomp.post._wbf_fast`, NMS and soft-NMS on `kcomp.post._nms_fast`; each gives ensemble-boxes' output
(same boxes, scores and order). `impl="reference"` calls ensemble-boxes image by image instead, for tests and
benchmarks (benchmarks/RESULTS.md has the timings)."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from kcomp.artifacts.boxes import Boxes
from kcomp.errors import BadUsage
from kcomp.options import WEIGHT, Choice, Float, Weighted, check_values, lazy, option, specs

METHODS = ("wbf", "nms", "soft_nms")
CONF_TYPES = ("avg", "max", "box_and_model_avg", "absent_model_aware_avg")
IMPLS = ("fast", "reference")
SKIP_BOX_THR = 0.01  # wbf's default: boxes scoring below are dropped before fusion


@dataclass(frozen=True)
class WbfOptions(Weighted):
    """What `kcomp wbf` was asked, checked on creation (each field with its Spec, as `TrainOptions`). `weights`
    holds one number per input file, parsed once from `--weights 1,2` by `from_cli`; `skip_box_thr` is None when
    not given (it applies to wbf and soft_nms only) and `box_thr` the threshold fusion uses."""

    iou: float = option(Float(0, 1, low_open=True), 0.55)
    skip_box_thr: float | None = option(Float(0, 1, default=SKIP_BOX_THR, needs=(
        "--method wbf or soft_nms", lambda v: v["method"] != "nms")))
    weights: tuple[float, ...] | None = option(replace(WEIGHT, repeated=True))
    method: str = option(Choice(lazy("kcomp.post.wbf", "METHODS"), what="fusion method"), "wbf")
    conf_type: str = option(Choice(lazy("kcomp.post.wbf", "CONF_TYPES"), what="confidence type"), "avg")

    @property
    def box_thr(self) -> float:
        return SKIP_BOX_THR if self.skip_box_thr is None else self.skip_box_thr


WBF = specs(WbfOptions)  # what `kcomp wbf` accepts; fuse_boxes holds its callers to the same values


def fuse_boxes(lists: Sequence[Boxes], heights: np.ndarray, widths: np.ndarray, *, method: str = "wbf",
               iou_thr: float = 0.55, skip_box_thr: float = 0.01, weights: Sequence[float] | None = None,
               conf_type: str = "avg", sigma: float = 0.5, impl: str = "fast") -> Boxes:
    """Box lists in pixels of the same images (image i of every list is a heights[i] x widths[i] picture), fused
    image by image; returns pixels. NMS ignores `skip_box_thr`; soft-NMS drops boxes whose decayed score is not
    above it."""
    check_values(WBF, method=method, conf_type=conf_type, iou=iou_thr, skip_box_thr=skip_box_thr)
    if impl not in IMPLS:
        raise BadUsage(f"impl {impl!r}: choose one of {', '.join(IMPLS)}")
    if weights is not None and len(weights) != len(lists):
        raise BadUsage(f"{len(weights)} weight(s) for {len(lists)} prediction file(s)")
    n = len(heights)
    if any(len(b) != n for b in lists):
        raise ValueError(f"box lists of {[len(b) for b in lists]} images for {n} image sizes")
    scale = np.stack([widths, heights, widths, heights], axis=1).astype(np.float64)
    if impl == "fast" and method == "nms":
        return _nms_pixels(lists, scale, weights, iou_thr)
    unit = [Boxes(b.offsets, np.clip(b.xyxy / scale[b.image_index()], 0.0, 1.0), b.score, b.label) for b in lists]
    kw = {"method": method, "iou_thr": iou_thr, "skip_box_thr": skip_box_thr, "weights": weights,
          "conf_type": conf_type, "sigma": sigma}
    fused = fuse_normalised(unit, **kw) if impl == "fast" else _reference(unit, **kw)
    return Boxes(fused.offsets, fused.xyxy * scale[fused.image_index()], fused.score, fused.label)


def fuse_normalised(lists: Sequence[Boxes], *, method: str = "wbf", iou_thr: float = 0.55,
                    skip_box_thr: float = 0.0, weights: Sequence[float] | None = None, conf_type: str = "avg",
                    sigma: float = 0.5) -> Boxes:
    """Lists of the same images, normalised [0, 1] coordinates, fused in one kernel call."""
    n_images = len(lists[0]) if lists else 0
    model = np.repeat(np.arange(len(lists)), np.array([b.n_boxes for b in lists], dtype=np.int64))
    cat = Boxes.concat(lists)
    image = np.concatenate([b.image_index() for b in lists] or [np.zeros(0, np.int64)])
    return fuse_flat(cat.xyxy, cat.score, cat.label, model, image, len(lists), n_images, method=method,
                     iou_thr=iou_thr, skip_box_thr=skip_box_thr, weights=weights, conf_type=conf_type, sigma=sigma)


def fuse_flat(xyxy: np.ndarray, score: np.ndarray, label: np.ndarray, model: np.ndarray, image: np.ndarray,
              n_models: int, n_images: int, *, method: str = "wbf", iou_thr: float = 0.55, skip_box_thr: float = 0.0,
              weights: Sequence[float] | None = None, conf_type: str = "avg", sigma: float = 0.5) -> Boxes:
    """One row per box with its list (`model`) and image (0..n_images-1); rows of one image and list in their
    list's order. Returns the fused boxes of every image (in the reference's order within an image)."""
    from kcomp.post._nms_fast import nms_flat, soft_nms_flat
    from kcomp.post._wbf_fast import wbf_flat

    args = (xyxy, score, label, model, image, n_models)
    if method == "wbf":
        fb, fs, fl, fi = wbf_flat(*args, weights=weights, iou_thr=iou_thr, skip_box_thr=skip_box_thr,
                                  conf_type=conf_type)
    elif method == "nms":
        fb, fs, fl, fi = nms_flat(*args, weights=weights, iou_thr=iou_thr)
    else:
        fb, fs, fl, fi = soft_nms_flat(*args, weights=weights, iou_thr=iou_thr, sigma=sigma, thresh=skip_box_thr)
    return Boxes.from_flat(fi, n_images, fb, fs, fl)


def _nms_pixels(lists: Sequence[Boxes], scale: np.ndarray, weights: Sequence[float] | None, iou_thr: float) -> Boxes:
    """NMS reading every list where it lies: the kernel divides by each image's size itself (the normalised copies
    and their gathers cost as much as the selection)."""
    from kcomp.post._nms_fast import nms_segments

    cat = Boxes.concat(lists)
    base = np.cumsum([0, *(b.n_boxes for b in lists)])[:-1]
    starts = np.stack([b.offsets + o for b, o in zip(lists, base, strict=True)]) if lists else \
        np.zeros((0, len(scale) + 1), np.int64)
    fb, fs, fl, fi = nms_segments(cat.xyxy, cat.score, cat.label, np.arange(cat.n_boxes), starts, scale,
                                  weights=weights, iou_thr=iou_thr)
    return Boxes.from_flat(fi, len(scale), fb * scale[fi], fs, fl)


def _reference(lists: Sequence[Boxes], *, method: str, iou_thr: float, skip_box_thr: float,
               weights: Sequence[float] | None, conf_type: str, sigma: float) -> Boxes:
    """ensemble-boxes image by image (its warnings, printed on stdout, are swallowed). It raises on an image
    without a box of positive area for NMS and soft-NMS, which gets no boxes here, as on the fast path."""
    import ensemble_boxes as eb

    n_images = len(lists[0]) if lists else 0
    out = []
    for i in range(n_images):
        parts = [b.image(i) for b in lists]
        boxes = [p.xyxy for p in parts]
        scores = [p.score for p in parts]
        labels = [p.label.astype(np.float64) for p in parts]
        with contextlib.redirect_stdout(io.StringIO()):
            if method == "wbf":
                r = eb.weighted_boxes_fusion(boxes, scores, labels, weights=weights, iou_thr=iou_thr,
                                             skip_box_thr=skip_box_thr, conf_type=conf_type)
            elif not _any_area(boxes):
                r = (np.zeros((0, 4)), np.zeros(0), np.zeros(0))
            elif method == "nms":
                r = eb.nms(boxes, scores, labels, weights=weights, iou_thr=iou_thr)
            else:
                r = eb.soft_nms(boxes, scores, labels, weights=weights, iou_thr=iou_thr, sigma=sigma,
                                thresh=skip_box_thr)
        out.append(np.column_stack([np.asarray(r[0], np.float64).reshape(-1, 4), r[1], r[2]]))
    return Boxes.from_rows(out)


def _any_area(boxes: list[np.ndarray]) -> bool:
    b = np.clip(np.concatenate(boxes), 0.0, 1.0) if boxes else np.zeros((0, 4))
    return bool(((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) != 0).any())

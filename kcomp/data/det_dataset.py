"""Detection dataset: square images at the model's input size with their boxes, for effdet.

Boxes arrive in ORIGINAL image pixels (the index's `boxes`, whatever size the cached image is) and are scaled by
(img_size / width, img_size / height): the cached image is the whole original resized to a square, no letterbox.
16-bit caches (`prep --bits 16`) become float32 0..255 items, keeping their precision.
Training items go through albumentations with bbox params; boxes are then clipped to the image and those thinner
than `MIN_SIDE` px dropped. Items are (uint8 CxSxS image, (M, 5) float target [y1, x1, y2, x2, class 1-based], rows
of -1 padding) so the default collate stacks them; `M` is fixed per dataset (its most boxes per image, >= 1).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from kcomp.data.batched import ThreadedReads, split_entry
from kcomp.data.images import chw_tensor
from kcomp.errors import BadInput

MIN_SIDE = 1.0  # px at model input; thinner boxes carry no signal and break the box coder's log(w)


def det_train_transform(level: str = "medium", *, min_visibility: float = 0.3) -> Any:
    """Flip + light affine + brightness/contrast. No vertical flip: chest X-rays have an up. Boxes follow."""
    import albumentations as A

    ops: list[Any] = []
    if level != "none":
        ops.append(A.HorizontalFlip(p=0.5))
        if level in ("medium", "strong"):
            ops.append(A.Affine(scale=(0.9, 1.1), translate_percent=(-0.06, 0.06), rotate=(-7, 7), p=0.5))
        ops.append(A.RandomBrightnessContrast(0.15, 0.15, p=0.5))
        if level == "strong":
            ops.append(A.CoarseDropout(num_holes_range=(1, 6), hole_height_range=(0.04, 0.1),
                                       hole_width_range=(0.04, 0.1), p=0.3))
    return A.Compose(ops, bbox_params=A.BboxParams(format="pascal_voc", label_fields=["labels"],
                                                   min_visibility=min_visibility, clip=True))


def read_image(path: Path, size: int) -> np.ndarray:
    """HxWxC (C = 1 or 3) at size x size: uint8 as stored; 16-bit becomes float32 in [0, 1] (the range
    albumentations assumes for floats; `DetDataset` scales it to 0..255 after augmenting, keeping the precision)."""
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        if not Path(path).is_file():
            raise BadInput("image file not found", path=path)
        raise BadInput("not a readable image", path=path)
    if img.ndim == 3:
        img = cv2.cvtColor(img[..., :3], cv2.COLOR_BGR2RGB)
    if img.dtype == np.uint16:
        img = img.astype(np.float32) / 65535.0
    elif img.dtype != np.uint8:
        raise BadInput(f"unsupported pixel type {img.dtype} (expected 8- or 16-bit)", path=path)
    if img.shape[:2] != (size, size):
        shrink = img.shape[0] > size
        img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return img if img.ndim == 3 else img[..., None]


def box_rows(boxes: Any, labels: dict[str, int]) -> np.ndarray:
    """Index boxes (dicts x1,y1,x2,y2,label) -> (g, 5) float32 [x1, y1, x2, y2, label index]."""
    rows = []
    for b in [] if boxes is None else boxes:
        lab = labels.get(str(b["label"]))
        if lab is None:
            raise BadInput(f"box label {b['label']!r} is not among the classes {sorted(labels)}")
        rows.append([b["x1"], b["y1"], b["x2"], b["y2"], lab])
    return np.asarray(rows, dtype=np.float32).reshape(-1, 5)


def scaled_boxes(boxes: Any, labels: dict[str, int], height: int, width: int, size: int) -> np.ndarray:
    """Index boxes in original pixels -> (g, 5) [x1, y1, x2, y2, label] at `size` px, clipped; degenerate ones
    dropped."""
    arr = box_rows(boxes, labels)
    arr[:, [0, 2]] *= size / width
    arr[:, [1, 3]] *= size / height
    return clip_boxes(arr, size, size)


def clip_boxes(arr: np.ndarray, height: int, width: int) -> np.ndarray:
    """Boxes clipped to the image; those thinner than MIN_SIDE px afterwards are dropped."""
    arr = arr.copy()
    arr[:, [0, 2]] = arr[:, [0, 2]].clip(0, width)
    arr[:, [1, 3]] = arr[:, [1, 3]].clip(0, height)
    keep = (arr[:, 2] - arr[:, 0] >= MIN_SIDE) & (arr[:, 3] - arr[:, 1] >= MIN_SIDE)
    return arr[keep]


class DetDataset(ThreadedReads, Dataset):
    """(image, padded yxyx target) items; `targets_array()` gives each image's (g, 5) [x1, y1, x2, y2, label]
    boxes in normalised [0, 1] image coordinates, as validation compares them with `task.predict`'s output."""

    def __init__(self, files: Sequence[Path], boxes: Sequence[np.ndarray], img_size: int,
                 transform: Callable[..., Any] | None) -> None:
        self.files, self.boxes, self.size, self.transform = list(files), list(boxes), img_size, transform
        self.max_boxes = max([1, *(len(b) for b in self.boxes)])

    def __len__(self) -> int:
        return len(self.files)

    def read(self, idx: int) -> np.ndarray:
        return read_image(self.files[idx], self.size)

    def item(self, entry: int | tuple[int, int], img: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        idx, seed = split_entry(entry)
        boxes = self.boxes[idx]
        if self.transform is not None:
            if seed is not None:
                self.transform.set_random_seed(seed)
            out = self.transform(image=img, bboxes=boxes[:, :4], labels=boxes[:, 4])
            img = out["image"]
            kept = np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)
            labels = np.asarray(out["labels"], dtype=np.float32).reshape(-1, 1)
            boxes = clip_boxes(np.concatenate([kept, labels], 1), self.size, self.size)
        if img.dtype != np.uint8:
            img = img * np.float32(255.0)  # the model normalises 0..255 inputs
        x = chw_tensor(img)
        return x, self.target(boxes)

    def target(self, boxes: np.ndarray) -> torch.Tensor:
        t = torch.full((self.max_boxes, 5), -1.0)
        n = len(boxes)
        if n:
            b = torch.from_numpy(boxes.astype(np.float32))
            t[:n, :4] = b[:, [1, 0, 3, 2]]  # xyxy -> yxyx, effdet's order
            t[:n, 4] = b[:, 4] + 1  # effdet's classes start at 1
        return t

    def targets_array(self) -> np.ndarray:
        out = np.empty(len(self.boxes), dtype=object)
        for i, b in enumerate(self.boxes):  # one by one: equal shapes would make numpy broadcast
            out[i] = (b * np.array([1 / self.size] * 4 + [1], dtype=np.float32)).astype(np.float32)
        return out


class AnchorCollate:
    """The training loader's collate for det: the batch as torch's default collate stacks it, its (B, M, 5) targets
    replaced by effdet's anchor labels (`DetLoss`'s input), computed here on the CPU, in the loader's workers,
    instead of on the device in the training step. One image at a time, as effdet's own training loader labels
    them (`effdet.data.loader.DetectionFastCollate`); the labels are the ones effdet's `DetBenchTrain` computes
    from the same targets in its forward."""

    def __init__(self, config: Any) -> None:
        from effdet.anchors import AnchorLabeler, Anchors

        self.labeler = AnchorLabeler(Anchors.from_config(config), int(config.num_classes), match_threshold=0.5)

    def __call__(self, batch: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, dict[str, Any]]:
        from torch.utils.data import default_collate

        x, target = default_collate(batch)
        with torch.no_grad():
            cls, box, positives = self.labeler.batch_label_anchors(target[..., :4], target[..., 4])
        return x, {"cls": cls, "box": box, "positives": positives}

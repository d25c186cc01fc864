"""Multi-label segmentation data: RGB images with one RLE mask per class, read at the model's input size.

Masks stay RLE strings in the index and are sampled per item at the input size straight from the runs (no full-size
array; microseconds a Clouds mask, `bench_rle.py`'s decode_resized lines), so nothing is cached and DataLoader workers
stay small. `prep` checks every RLE by parsing its numbers only (`kcomp.formats.rle.check`), without filling a full-size
mask.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kcomp.data.batched import ThreadedReads, split_entry
from kcomp.data.images import chw_tensor, read_square

if TYPE_CHECKING:
    import torch

AUG_LEVELS = ("none", "light", "medium", "strong")


def sample_mask(rle: str, shape: tuple[int, int], out: tuple[int, int], order: str = "column", *,
                where: str = "") -> np.ndarray:
    """uint8 0/1 C-contiguous (out_h, out_w) mask of an RLE of a `shape` image, resized nearest-neighbour at pixel
    centres (cv2's INTER_NEAREST_EXACT, as PIL and scikit-image do) straight from the runs, without decoding the
    full-size mask; at `out == shape` the exact decode."""
    from kcomp.formats.rle import decode_resized

    return decode_resized(rle, (int(shape[0]), int(shape[1])), (int(out[0]), int(out[1])), order, where=where)


def seg_train_transform(level: str = "medium") -> Any:
    """Spatial augmentations applied to the image and its masks together (mask: nearest, zero outside)."""
    import albumentations as A

    if level not in AUG_LEVELS:
        from kcomp.errors import BadUsage

        raise BadUsage(f"--aug {level}: choose one of {', '.join(AUG_LEVELS)}")
    if level == "none":
        return None
    ops: list[Any] = [A.HorizontalFlip(), A.VerticalFlip()]
    if level in ("medium", "strong"):
        strong = level == "strong"
        ops += [A.Affine(scale=(0.8, 1.2) if strong else (0.9, 1.1), translate_percent=(-0.1, 0.1) if strong else
                         (-0.0625, 0.0625), rotate=(-20, 20) if strong else (-10, 10), p=0.5),
                A.RandomBrightnessContrast(0.15 if strong else 0.1, 0.15 if strong else 0.1, p=0.3)]
    return A.Compose(ops)


class SegDataset(ThreadedReads):
    """Items: (uint8 3xSxS image, uint8 CxSxS 0/1 masks) or (image, -1) without targets; S = `size`. A plain
    map-style dataset (DataLoader needs only __len__/__getitem__/__getitems__), so `prep` can use this module's RLE
    helpers without importing torch.

    `masks[i]` holds row i's RLE per class ("" = empty) for an image of `shapes[i]` = (height, width).
    """

    def __init__(self, files: Sequence[Path], shapes: Sequence[tuple[int, int]],
                 masks: Sequence[Sequence[str]] | None, size: int, *, order: str = "column",
                 transform: Any = None, ids: Sequence[str] | None = None,
                 cache: Sequence[np.ndarray] | None = None) -> None:
        self.files, self.shapes = list(files), [(int(h), int(w)) for h, w in shapes]
        self.masks = [list(m) for m in masks] if masks is not None else None
        self.size, self.order, self.transform = int(size), order, transform
        self.ids = [str(i) for i in ids] if ids is not None else [str(f) for f in self.files]
        self.cache = cache  # cache[i]: files[i] decoded at >= size px (`kcomp.data.image_cache`)

    def __len__(self) -> int:
        return len(self.files)

    def read(self, idx: int) -> np.ndarray:
        if self.cache is None:
            return read_square(self.files[idx], self.size)
        img = self.cache[idx]
        if img.shape[0] != self.size:  # a larger cache: averaged down, as from the file
            import cv2

            img = cv2.resize(img, (self.size, self.size), interpolation=cv2.INTER_AREA)
        return img

    def target(self, idx: int) -> np.ndarray:
        """(S, S, C) uint8 0/1 masks of row idx at the input size."""
        assert self.masks is not None
        s = (self.size, self.size)
        return np.stack([sample_mask(r, self.shapes[idx], s, self.order, where=f"{self.ids[idx]} class {c}")
                         for c, r in enumerate(self.masks[idx])], axis=-1)

    def item(self, entry: int | tuple[int, int], img: np.ndarray) -> tuple[torch.Tensor, Any]:
        idx, seed = split_entry(entry)
        m = self.target(idx) if self.masks is not None else None
        if self.transform is not None:
            if seed is not None:
                self.transform.set_random_seed(seed)
            out = self.transform(image=img, mask=m) if m is not None else self.transform(image=img)
            img, m = out["image"], out.get("mask", m)
        x = chw_tensor(img)
        if m is None:
            return x, -1
        return x, chw_tensor(m)

    def targets_array(self) -> np.ndarray:
        """(N, C, S, S) uint8 masks, unaugmented, for validation scores."""
        if self.masks is None:
            raise ValueError("dataset built without targets")
        n_cls = len(self.masks[0]) if self.masks else 0
        out = np.zeros((len(self), n_cls, self.size, self.size), np.uint8)
        for i in range(len(self)):
            out[i] = self.target(i).transpose(2, 0, 1)
        return out

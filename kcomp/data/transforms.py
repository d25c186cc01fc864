"""Albumentations pipelines. They stay on uint8 and leave normalisation to the model, which does it on the device."""

from __future__ import annotations

from typing import Any


def cls_train(img_size: int, level: str = "medium") -> Any:
    import albumentations as A

    if level == "none":
        return cls_eval(img_size)
    ops: list[Any] = [
        A.RandomResizedCrop(size=(img_size, img_size), scale=(0.6 if level == "medium" else 0.3, 1.0)),
        A.HorizontalFlip(),
        A.VerticalFlip(),
    ]
    if level in ("medium", "strong"):
        ops += [A.Affine(rotate=(-20, 20), p=0.5), A.HueSaturationValue(10, 15, 10, p=0.5),
                A.RandomBrightnessContrast(0.15, 0.15, p=0.5)]
    if level == "strong":
        ops += [A.CoarseDropout(num_holes_range=(1, 8), hole_height_range=(0.05, 0.15),
                                hole_width_range=(0.05, 0.15), p=0.5)]
    return A.Compose(ops)


def cls_eval(img_size: int) -> Any:
    import albumentations as A

    return A.Compose([A.Resize(img_size, img_size)])


AUG_LEVELS = ("none", "light", "medium", "strong")

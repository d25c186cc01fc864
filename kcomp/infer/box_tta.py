"""Exact inverses of `kcomp.infer.tta.flips` for boxes, plus the xyxy <-> yxyx swap effdet needs.

Boxes are continuous pixel-edge coordinates (a box covering columns 0..9 is x1=0, x2=10), so flipping an image of
width W maps x to W - x exactly and a box [x1, x2] to [W - x2, W - x1]; no off-by-one.
View order is that of `flips`: 0 identity, 1 W flip, 2 H flip, 3 H+W flip, 4 transpose, 5-7 the transpose flipped
like views 1-3. Transposed views need square inputs (the det task's are).
"""

from __future__ import annotations

import torch

# per view: (flip x, flip y) applied after the optional transpose when the view was made
_FLIPS = ((False, False), (True, False), (False, True), (True, True))


def xyxy_to_yxyx(boxes: torch.Tensor) -> torch.Tensor:
    """[..., x1 y1 x2 y2] <-> [..., y1 x1 y2 x2]: the same swap both ways (effdet's anchors are yxyx)."""
    return boxes[..., [1, 0, 3, 2]]


yxyx_to_xyxy = xyxy_to_yxyx


def flip_boxes(boxes: torch.Tensor, view: int, size: tuple[int, int]) -> torch.Tensor:
    """Boxes [..., x1 y1 x2 y2] of the original image -> boxes of view `view` (an image of `size` = (H, W))."""
    h, w = size
    b = boxes
    if view >= 4:
        if h != w:
            raise ValueError(f"transposed TTA views need square images, got {h}x{w}")
        b = xyxy_to_yxyx(b)
    fx, fy = _FLIPS[view % 4]
    return _flip(b, fx, fy, h, w)


def unflip_boxes(boxes: torch.Tensor, view: int, size: tuple[int, int]) -> torch.Tensor:
    """Boxes found in view `view` -> boxes of the original image; `flip_boxes`' exact inverse."""
    h, w = size
    fx, fy = _FLIPS[view % 4]
    b = _flip(boxes, fx, fy, h, w)
    if view >= 4:
        if h != w:
            raise ValueError(f"transposed TTA views need square images, got {h}x{w}")
        b = xyxy_to_yxyx(b)
    return b


def _flip(b: torch.Tensor, fx: bool, fy: bool, h: int, w: int) -> torch.Tensor:
    if not (fx or fy):
        return b
    x1, y1, x2, y2 = b.unbind(-1)
    if fx:
        x1, x2 = w - x2, w - x1
    if fy:
        y1, y2 = h - y2, h - y1
    return torch.stack([x1, y1, x2, y2], -1)

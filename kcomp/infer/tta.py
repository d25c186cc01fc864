"""Flip and multi-scale TTA. Flip views are returned as a list so a task can batch them through the model in one
call; scales change the input size, so each scale is its own forward pass."""

from __future__ import annotations

from collections.abc import Callable

import torch

TTA_SIZES = (1, 2, 4, 8)


def flips(x: torch.Tensor, n: int) -> list[torch.Tensor]:
    """n=1 identity; 2 adds W flip; 4 adds H and HW flips; 8 adds the four transposed views (square inputs)."""
    if n not in TTA_SIZES:
        from kcomp.errors import BadUsage

        raise BadUsage(f"--tta {n}: choose one of {', '.join(map(str, TTA_SIZES))}")
    views = [x]
    if n >= 2:
        views.append(x.flip(-1))
    if n >= 4:
        views += [x.flip(-2), x.flip(-2, -1)]
    if n == 8:
        t = x.transpose(-2, -1)
        views += [t, t.flip(-1), t.flip(-2), t.flip(-2, -1)]
    return views


def unflip(views: list[torch.Tensor]) -> list[torch.Tensor]:
    """Exact inverses of `flips` for dense outputs (seg/ink maps), in the same order."""
    out = [views[0]]
    if len(views) >= 2:
        out.append(views[1].flip(-1))
    if len(views) >= 4:
        out += [views[2].flip(-2), views[3].flip(-2, -1)]
    if len(views) == 8:
        out += [views[4].transpose(-2, -1), views[5].flip(-1).transpose(-2, -1),
                views[6].flip(-2).transpose(-2, -1), views[7].flip(-2, -1).transpose(-2, -1)]
    return out


def scaled_size(size: tuple[int, int], scale: float) -> tuple[int, int]:
    """(H, W) of a view at `scale` (multi-scale TTA): each side rounded, at least 1 px."""
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of (B, C, H, W) images or maps to `size` (float), pixel centres aligned
    (align_corners=False, as for box coordinates). Not antialiased: plain bilinear reproduces a linear function
    exactly inside the image at every scale, so a map resized to a scale and back lands on the same pixels (an
    antialiasing filter shifts it by a fraction of a pixel); TTA scales are near 1, where aliasing is slight.
    The identity at the same size."""
    import torch.nn.functional as F

    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x.float(), size=size, mode="bilinear", align_corners=False)


def at_scales(x: torch.Tensor, scales: tuple[float, ...] | list[float]) -> list[torch.Tensor]:
    """The batch at each of `scales` (1.0: the batch itself); a model's outputs at scale s map back to the
    original by `resize` (maps) or by dividing coordinates by the view's own size (boxes, normalised)."""
    size = (int(x.shape[-2]), int(x.shape[-1]))
    return [resize(x, scaled_size(size, s)) for s in scales]


def per_view(fn: Callable[[torch.Tensor], torch.Tensor], views: list[torch.Tensor]) -> torch.Tensor:
    """`fn(torch.cat(views))` computed one view at a time, outputs concatenated in view order: a forward pass never
    holds more than one `--batch-size` batch of activations, so `--tta 8` fits wherever `--tta 1` does."""
    if len(views) == 1:
        return fn(views[0])
    return torch.cat([fn(v) for v in views])

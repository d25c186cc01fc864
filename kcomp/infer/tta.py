"""Flip TTA. Views are returned as a list so a task can batch them through the model in one call."""

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


def per_view(fn: Callable[[torch.Tensor], torch.Tensor], views: list[torch.Tensor]) -> torch.Tensor:
    """`fn(torch.cat(views))` computed one view at a time, outputs concatenated in view order: a forward pass never
    holds more than one `--batch-size` batch of activations, so `--tta 8` fits wherever `--tta 1` does."""
    if len(views) == 1:
        return fn(views[0])
    return torch.cat([fn(v) for v in views])

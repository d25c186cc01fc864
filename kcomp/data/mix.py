"""Mixup / CutMix on the device, with every random choice drawn from a caller-owned CPU ``torch.Generator``.

Resuming must reproduce a run bit for bit, so nothing here touches the global RNGs: re-seeding the generator per step
replays the same mixing. Random scalars (apply?, which mode, lam, box) are drawn on the host from a numpy Generator
seeded from that torch generator, because torch's Beta/Gamma samplers take no generator. Nothing is read back from the
device (no ``.item()``/``.cpu()`` on x or y), so mixing never forces a CUDA sync.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor


def one_hot(y: Tensor, num_classes: int) -> Tensor:
    """Float32 ``(N, num_classes)`` targets; 2-D (already soft) targets pass through as float32.

    ``scatter_`` instead of ``F.one_hot`` because the latter range-checks indices, which syncs a CUDA device.
    """
    if y.ndim == 2:
        if y.shape[1] != num_classes:
            raise ValueError(f"soft targets have {y.shape[1]} classes, expected {num_classes}")
        return y.float()
    if y.ndim != 1:
        raise ValueError(f"targets must be (N,) indices or (N, K) soft targets, got shape {tuple(y.shape)}")
    out = torch.zeros(y.shape[0], num_classes, dtype=torch.float32, device=y.device)
    return out.scatter_(1, y.long().unsqueeze(1), 1.0)


def _host_rng(generator: torch.Generator) -> np.random.Generator:
    if generator.device.type != "cpu":
        raise ValueError(f"mix_batch needs a CPU torch.Generator, got one on {generator.device}")
    # One draw from the torch generator per call, so the stream advances the same way whatever gets mixed.
    return np.random.default_rng(int(torch.randint(0, 2**63 - 1, (1,), generator=generator)))


def cutmix_box(lam: float, height: int, width: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """Box ``(y0, y1, x0, x1)`` covering about ``1 - lam`` of the image, centre uniform, clipped to the image (timm)."""
    ratio = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    cy = int(rng.integers(0, height))
    cx = int(rng.integers(0, width))
    y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
    x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
    return y0, y1, x0, x1


def mix_batch(x: Tensor, y: Tensor, num_classes: int, *, mixup_alpha: float, cutmix_alpha: float, prob: float,
              switch_prob: float = 0.5, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Mix a batch with itself reversed (``x.flip(0)``), as timm's batch mode does.

    x: ``(N, C, H, W)``; uint8 (and other integer) input becomes float32 before mixing, float input keeps its dtype.
    y: int64 ``(N,)`` or soft ``(N, K)``. Returns ``(x, float32 (N, K) targets)``. With probability ``1 - prob``, or
    when both alphas are 0, x comes back unmixed (still converted to float) with one-hot targets. Mixup blends whole
    images with ``lam ~ Beta(a, a)``; CutMix pastes a box of the flipped batch and sets lam to the true area kept.
    When both alphas are > 0, CutMix is chosen with probability ``switch_prob``. The input tensors are not modified.
    """
    if x.ndim != 4:
        raise ValueError(f"x must be (N, C, H, W), got shape {tuple(x.shape)}")
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"{y.shape[0]} targets for {x.shape[0]} images")
    if mixup_alpha < 0 or cutmix_alpha < 0:
        raise ValueError(f"alphas must be >= 0, got mixup {mixup_alpha}, cutmix {cutmix_alpha}")
    if not (0.0 <= prob <= 1.0 and 0.0 <= switch_prob <= 1.0):
        raise ValueError(f"prob and switch_prob must be in [0, 1], got {prob}, {switch_prob}")

    rng = _host_rng(generator)
    if not x.dtype.is_floating_point:
        x = x.float()
    targets = one_hot(y, num_classes)
    if (mixup_alpha == 0 and cutmix_alpha == 0) or not rng.random() < prob:
        return x, targets

    if mixup_alpha > 0 and cutmix_alpha > 0:
        use_cutmix = bool(rng.random() < switch_prob)
    else:
        use_cutmix = cutmix_alpha > 0
    alpha = cutmix_alpha if use_cutmix else mixup_alpha
    lam = float(rng.beta(alpha, alpha))

    if use_cutmix:
        height, width = x.shape[-2:]
        y0, y1, x0, x1 = cutmix_box(lam, height, width, rng)
        lam = 1.0 - (y1 - y0) * (x1 - x0) / float(height * width)
        mixed = x.clone()
        mixed[:, :, y0:y1, x0:x1] = x[:, :, y0:y1, x0:x1].flip(0)
    else:
        mixed = x * lam + x.flip(0) * (1.0 - lam)
    return mixed, targets * lam + targets.flip(0) * (1.0 - lam)

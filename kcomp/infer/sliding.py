"""Sliding-window prediction over a whole fragment: overlapping tiles blended with a smooth window (no seams),
batched, tiles read by DataLoader workers while the model runs (on a GPU, or on spare CPU cores), blending and the
uint8 map kept on the device.

The host's work per tile is one copy of the file's integers (no float conversion); the device scales them, runs
the model (TTA views in one forward), blends and masks. Nothing in the loop waits for the device: tile positions
stay on the host, and the map comes back once per fragment.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from kcomp import console
from kcomp.data.ink_patches import raw_to_input, window_positions
from kcomp.infer.predict import inference_loader


def blend_window(patch: int) -> torch.Tensor:
    """Separable sine window, floored so tiles at fragment borders still count."""
    ramp = torch.sin(torch.pi * (torch.arange(patch) + 0.5) / patch).clamp_min(0.05)
    return ramp[:, None] * ramp[None, :]


class _Tiles(Dataset):
    """Tile i = the raw (layers, patch, patch) window at positions[i], in the file's dtype (uint8/uint16)."""

    def __init__(self, stack: Any, layers: list[int], y0: int, positions: np.ndarray, patch: int) -> None:
        self.stack, self.layers, self.y0, self.positions, self.patch = stack, layers, y0, positions, patch

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        y, x = (int(v) for v in self.positions[i])
        p = self.patch
        return torch.from_numpy(self.stack.read(self.layers, self.y0 + y, self.y0 + y + p, x, x + p)), i


class _Band:
    """Blending accumulators for one row of tiles: `patch` rows x the fragment's width, on the device.

    Tiles arrive sorted by (y, x), so every tile of a row starts at band row 0; when the next row starts, the rows
    above it are final and go to the uint8 map (still on the device), and the band slides down (two buffers,
    swapped: no allocation per row)."""

    def __init__(self, h: int, w: int, patch: int, mask: np.ndarray, device: torch.device) -> None:
        width = max(w, patch)
        self.h, self.w, self.patch, self.top = h, w, patch, 0
        self.acc, self.weight = (torch.zeros((patch, width), device=device) for _ in range(2))
        self.spare_acc, self.spare_weight = torch.empty_like(self.acc), torch.empty_like(self.weight)
        self.win = blend_window(patch).to(device)
        self.out = torch.zeros((h, w), dtype=torch.uint8, device=device)
        self.mask = torch.from_numpy(mask).to(device, non_blocking=True)  # a view on the CPU

    def add(self, p: torch.Tensor, ty: int, tx: int) -> None:
        if ty > self.top:
            self.flush(ty)
        patch = self.patch
        self.acc[ty - self.top:ty - self.top + patch, tx:tx + patch] += p * self.win
        self.weight[ty - self.top:ty - self.top + patch, tx:tx + patch] += self.win

    def flush(self, until: int) -> None:
        """Write rows top..until-1 (no later tile reaches them) to the map and slide the band down."""
        n = min(until, self.h) - self.top
        if n <= 0:
            return
        k = min(n, self.patch)  # rows past the band had no tile (no papyrus): they stay 0
        top, w = self.top, self.w
        band = (self.acc[:k, :w] / self.weight[:k, :w].clamp_min(1e-6) * 255).round_().clamp_(0, 255)
        self.out[top:top + k] = band.to(torch.uint8).mul_(self.mask[top:top + k])
        for cur, spare in ((self.acc, self.spare_acc), (self.weight, self.spare_weight)):
            spare[:self.patch - k] = cur[k:]
            spare[self.patch - k:] = 0
        self.acc, self.spare_acc = self.spare_acc, self.acc
        self.weight, self.spare_weight = self.spare_weight, self.weight
        self.top += n


@torch.inference_mode()
def predict_region(model: torch.nn.Module, task: Any, stack: Any, layers: list[int], mask: np.ndarray, y0: int, *,
                   patch: int, stride: int, tta: int, batch_size: int, device: torch.device,
                   dtype: torch.dtype | None, workers: int = 2, label: str | None = None) -> np.ndarray:
    """uint8 probability map (prob*255) of the rows y0..y0+mask.shape[0] of a fragment, 0 outside `mask`.

    Blending needs only a band of `patch` rows (O(patch x width) float32 accumulators); the uint8 map is the only
    O(area) buffer, filled on the device and copied to the host once at the end (on the CPU it is the result)."""
    model.eval()
    h, w = mask.shape
    positions = window_positions(mask, patch, stride)  # sorted by y, then x
    band = _Band(h, w, patch, mask, device)
    loader = inference_loader(_Tiles(stack, layers, y0, positions, patch), batch_size=batch_size, workers=workers,
                              device=device)
    with console.progress(len(positions), label or "tiles", unit="tile") as bar:
        for raw, idx in loader:
            x = raw_to_input(raw.to(device, non_blocking=True))
            with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                probs = task.predict(model, x, tta).float()
            for p, (ty, tx) in zip(probs, positions[idx.numpy()].tolist(), strict=True):  # host ints: no sync
                band.add(p, ty, tx)
            bar.advance(len(idx))
    band.flush(h)
    return band.out.cpu().numpy()

"""Sliding-window prediction over a whole fragment: overlapping tiles blended with a smooth window (no seams),
batched, tiles read by DataLoader workers while the model runs, blending accumulated on the device."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from kcomp import console
from kcomp.data.ink_patches import read_window, window_positions


def blend_window(patch: int) -> torch.Tensor:
    """Separable sine window, floored so tiles at fragment borders still count."""
    ramp = torch.sin(torch.pi * (torch.arange(patch) + 0.5) / patch).clamp_min(0.05)
    return ramp[:, None] * ramp[None, :]


class _Tiles(Dataset):
    def __init__(self, stack: Any, layers: list[int], y0: int, positions: np.ndarray, patch: int) -> None:
        self.stack, self.layers, self.y0, self.positions, self.patch = stack, layers, y0, positions, patch

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        y, x = (int(v) for v in self.positions[i])
        arr = read_window(self.stack, self.layers, self.y0 + y, x, self.patch)
        return torch.from_numpy(arr).to(torch.float16), torch.tensor([y, x])


@torch.inference_mode()
def predict_region(model: torch.nn.Module, task: Any, stack: Any, layers: list[int], mask: np.ndarray, y0: int, *,
                   patch: int, stride: int, tta: int, batch_size: int, device: torch.device,
                   dtype: torch.dtype | None, workers: int = 2, label: str | None = None) -> np.ndarray:
    """uint8 probability map (prob*255) of the rows y0..y0+mask.shape[0] of a fragment, 0 outside `mask`.

    Tiles arrive in row order, so blending needs only a band of `patch` rows: rows above the current tile row
    are final and are written to the uint8 output. Memory for blending is O(patch x width), not O(area)."""
    model.eval()
    h, w = mask.shape
    positions = window_positions(mask, patch, stride)  # sorted by y, then x
    out = np.zeros((h, w), dtype=np.uint8)
    width = max(w, patch)
    acc = torch.zeros((patch, width), device=device)
    weight = torch.zeros_like(acc)
    top = 0  # fragment row held by band row 0
    win = blend_window(patch).to(device)

    def flush(until: int) -> None:
        """Write rows top..until-1 (final: no later tile reaches them) and slide the band down."""
        nonlocal acc, weight, top
        n = min(until, h) - top
        if n <= 0:
            return
        k = min(n, patch)  # rows past the band had no tile (no papyrus): they stay 0
        band = (acc[:k, :w] / weight[:k, :w].clamp_min(1e-6) * 255).round_().clamp_(0, 255).to(torch.uint8)
        out[top:top + k] = band.cpu().numpy()  # one copy per tile row, not per tile
        acc = torch.cat([acc[k:], torch.zeros((k, width), device=device)])
        weight = torch.cat([weight[k:], torch.zeros((k, width), device=device)])
        top += n

    loader = DataLoader(_Tiles(stack, layers, y0, positions, patch), batch_size=batch_size, num_workers=workers,
                        pin_memory=device.type == "cuda")
    with console.progress(len(positions), label or "tiles", unit="tile") as bar:
        for x, pos in loader:
            x = x.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                probs = task.predict(model, x, tta).float()
            for p, (ty, tx) in zip(probs, pos.tolist(), strict=True):  # pos lives on the host: no device sync
                if ty > top:
                    flush(ty)
                acc[ty - top:ty - top + patch, tx:tx + patch] += p * win
                weight[ty - top:ty - top + patch, tx:tx + patch] += win
            bar.advance(len(pos))
    flush(h)
    out[~mask] = 0
    return out

"""Batched prediction over a DataLoader, shared by validation, `oof` and `tta`."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from kcomp import console


@torch.inference_mode()
def predict_loader(model: torch.nn.Module, loader: DataLoader, task: Any, *, tta: int, device: torch.device,
                   dtype: torch.dtype | None, channels_last: bool = True, label: str | None = None) -> np.ndarray:
    """Predictions stay on the device until the end (one host sync per call, not per batch)."""
    model.eval()
    outs: list[torch.Tensor] = []
    total = len(loader.dataset)  # type: ignore[arg-type]
    ctx = console.progress(total, label) if label else _null_bar()
    with ctx as bar:
        for x, _ in loader:
            x = x.to(device, non_blocking=True)
            if channels_last and x.ndim == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                outs.append(task.predict(model, x, tta).float())
            bar.advance(x.shape[0])
    if not outs:
        return np.zeros((0,), dtype=np.float32)
    return torch.cat(outs).cpu().numpy()


class _null_bar:  # noqa: N801 - used like the context manager it stands in for
    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def advance(self, n: float = 1, **fields: Any) -> None:
        return None

"""Patches of TIFF layer stacks for task `ink`, read window by window from memory-mapped layers.

Items are (float16 (G*L, P, P) raw intensities, uint8 (P, P) target with 0/1 = no ink/ink and 2 = outside the
papyrus mask, ignored by loss and metric). Augmentations are seeded per sample (see `SeededSampler`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

IGNORE = 2


@dataclass
class Fragment:
    """One index row: a fragment (or a row range of one) with its layers, papyrus mask and ink labels."""

    id: str
    stack: Any  # kcomp.data.layers.LayerStack
    mask: np.ndarray  # bool (y1 - y0, W)
    labels: np.ndarray | None  # bool (y1 - y0, W) or None for test fragments
    y0: int


def window_positions(mask: np.ndarray, patch: int, stride: int) -> np.ndarray:
    """Top-left corners (y, x) of a grid of windows covering `mask` (last row/column flush with the edge) that
    hold at least one papyrus pixel. Window sums are computed one band of `patch` rows at a time (column sums, then
    a running sum along x), so memory stays O(patch x width) whatever the fragment's area."""
    h, w = mask.shape

    def starts(n: int) -> np.ndarray:
        if n <= patch:
            return np.array([0])
        s = np.arange(0, n - patch + 1, stride)
        return np.unique(np.append(s, n - patch))

    xs = starts(w)
    x1 = np.minimum(xs + patch, w)
    out = []
    for y in starts(h):
        cols = np.zeros(w + 1, dtype=np.int64)
        np.cumsum(np.count_nonzero(mask[y:y + patch], axis=0), out=cols[1:])
        keep = xs[cols[x1] - cols[xs] > 0]
        out.append(np.column_stack([np.full(len(keep), y), keep]))
    return np.concatenate(out).astype(np.int64) if out else np.zeros((0, 2), dtype=np.int64)


def _balance(positions: np.ndarray, labels: np.ndarray, patch: int, neg_fraction: float,
             rng: np.random.Generator) -> np.ndarray:
    """Keep every window holding ink and a seeded `neg_fraction` of the ink-free ones (ink is a few % of papyrus)."""
    h, w = labels.shape
    integral = np.zeros((h + 1, w + 1), dtype=np.int64)
    integral[1:, 1:] = labels.astype(np.int64).cumsum(0).cumsum(1)
    y0, x0 = positions[:, 0], positions[:, 1]
    y1, x1 = np.minimum(y0 + patch, h), np.minimum(x0 + patch, w)
    ink = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
    keep = (ink > 0) | (rng.random(len(positions)) < neg_fraction)
    return positions[keep]


class InkPatches(Dataset):
    def __init__(self, fragments: list[Fragment], *, layers: list[int], patch: int, stride: int, train: bool,
                 layer_shift: int = 0, with_targets: bool = True, neg_fraction: float = 1.0, seed: int = 0) -> None:
        self.fragments, self.layers, self.patch = fragments, layers, patch
        self.train, self.layer_shift, self.with_targets = train, layer_shift, with_targets
        pos = []
        for i, f in enumerate(fragments):
            p = window_positions(f.mask, patch, stride)
            if neg_fraction < 1 and f.labels is not None:
                p = _balance(p, f.labels, patch, neg_fraction, np.random.default_rng(seed + i))
            pos.append(np.column_stack([np.full(len(p), i), p]))
        self.positions = np.concatenate(pos) if pos else np.zeros((0, 3), dtype=np.int64)

    def __len__(self) -> int:
        return len(self.positions)

    def _layers(self, rng: np.random.Generator | None, n_layers: int) -> list[int]:
        """Channel(layer)-shift augmentation: the same window of layers, moved up or down the stack a little."""
        if rng is None or not self.layer_shift:
            return self.layers
        lo, hi = -self.layers[0], n_layers - 1 - self.layers[-1]
        shift = int(rng.integers(max(lo, -self.layer_shift), min(hi, self.layer_shift) + 1))
        return [v + shift for v in self.layers]

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx, seed = item if isinstance(item, tuple) else (item, None)
        rng = np.random.default_rng(seed) if (self.train and seed is not None) else None
        f_idx, y, x = (int(v) for v in self.positions[idx])
        frag, p = self.fragments[f_idx], self.patch
        layers = self._layers(rng, frag.stack.n_layers)
        # /256 keeps uint16 intensities inside float16's range (65504); the model normalises per patch anyway
        arr = frag.stack.read(layers, frag.y0 + y, frag.y0 + y + p, x, x + p).astype(np.float32) * (1 / 256)
        target = self._target(frag, y, x)
        if rng is not None:
            if rng.random() < 0.5:
                arr = arr[::-1]  # depth flip
            k = int(rng.integers(4))
            arr, target = np.rot90(arr, k, axes=(1, 2)), np.rot90(target, k)
            if rng.random() < 0.5:
                arr, target = arr[:, :, ::-1], target[:, ::-1]
        x_t = torch.from_numpy(np.ascontiguousarray(arr)).to(torch.float16)
        return x_t, torch.from_numpy(np.ascontiguousarray(target))

    def _target(self, frag: Fragment, y: int, x: int) -> np.ndarray:
        p = self.patch
        target = np.full((p, p), IGNORE, dtype=np.uint8)
        if frag.labels is not None and self.with_targets:
            m, lab = frag.mask[y:y + p, x:x + p], frag.labels[y:y + p, x:x + p]
            target[: m.shape[0], : m.shape[1]] = np.where(m, lab.astype(np.uint8), IGNORE)
        return target

    def targets_array(self) -> np.ndarray:
        """Validation targets without reading any layer."""
        if not len(self):
            return np.zeros((0, self.patch, self.patch), dtype=np.uint8)
        return np.stack([self._target(self.fragments[int(f)], int(y), int(x)) for f, y, x in self.positions])

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

from kcomp.data.batched import split_entry

IGNORE = 2


@dataclass
class Fragment:
    """One index row: a fragment (or a row range of one) with its layers, papyrus mask and ink labels."""

    id: str
    stack: Any  # kcomp.data.layers.LayerStack
    mask: np.ndarray  # bool (y1 - y0, W)
    labels: np.ndarray | None  # bool (y1 - y0, W) or None for test fragments
    y0: int


def grid_starts(n: int, patch: int, stride: int) -> np.ndarray:
    """Window starts along one axis every `stride`, the last one flush with the edge."""
    if n <= patch:
        return np.array([0])
    return np.unique(np.append(np.arange(0, n - patch + 1, stride), n - patch))


def window_counts(binary: np.ndarray, ys: np.ndarray, xs: np.ndarray, patch: int) -> np.ndarray:
    """Nonzero pixels in every window (ys x xs grid), one band of `patch` rows at a time (column counts, then a
    running sum along x), so memory stays O(patch x width) whatever the fragment's area."""
    w = binary.shape[1]
    x1 = np.minimum(xs + patch, w)
    counts = np.empty((len(ys), len(xs)), dtype=np.int64)
    cols = np.zeros(w + 1, dtype=np.int64)
    for i, y in enumerate(ys):
        np.cumsum(np.count_nonzero(binary[y:y + patch], axis=0), out=cols[1:])
        counts[i] = cols[x1] - cols[xs]
    return counts


def window_positions(mask: np.ndarray, patch: int, stride: int) -> np.ndarray:
    """Top-left corners (y, x), sorted by y then x, of the grid windows holding at least one papyrus pixel."""
    h, w = mask.shape
    ys, xs = grid_starts(h, patch, stride), grid_starts(w, patch, stride)
    iy, ix = np.nonzero(window_counts(mask, ys, xs, patch))
    return np.column_stack([ys[iy], xs[ix]]).astype(np.int64)


def _balance(positions: np.ndarray, labels: np.ndarray, patch: int, neg_fraction: float,
             rng: np.random.Generator) -> np.ndarray:
    """Keep every window holding ink and a seeded `neg_fraction` of the ink-free ones (ink is a few % of papyrus)."""
    ys, xs = np.unique(positions[:, 0]), np.unique(positions[:, 1])
    counts = window_counts(labels, ys, xs, patch)
    ink = counts[np.searchsorted(ys, positions[:, 0]), np.searchsorted(xs, positions[:, 1])]
    keep = (ink > 0) | (rng.random(len(positions)) < neg_fraction)
    return positions[keep]


SCALE = 1 / 256  # keeps uint16 intensities inside float16's range (65504); the model normalises per patch anyway


def read_window(stack: Any, layers: list[int], y: int, x: int, patch: int) -> np.ndarray:
    """A (layers, patch, patch) float32 window scaled by SCALE, ready for a float16 host-to-device copy."""
    return stack.read(layers, y, y + patch, x, x + patch).astype(np.float32) * SCALE


def raw_to_input(raw: torch.Tensor) -> torch.Tensor:
    """Raw uint8/uint16 windows (already on the device) -> the float16 the model gets from `read_window`, value for
    value: inference ships the file's integers (no host-side conversion) and converts where the model runs."""
    return raw.to(torch.float32).mul_(SCALE).to(torch.float16)


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
        idx, seed = split_entry(item)
        rng = np.random.default_rng(seed) if (self.train and seed is not None) else None
        f_idx, y, x = (int(v) for v in self.positions[idx])
        frag, p = self.fragments[f_idx], self.patch
        layers = self._layers(rng, frag.stack.n_layers)
        arr = read_window(frag.stack, layers, frag.y0 + y, x, p)
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

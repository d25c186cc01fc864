"""Datasets and the seeded sampler that makes training replayable.

The sampler yields `(index, sample_seed)` pairs derived from (seed, epoch) only, and datasets seed their
augmentations from `sample_seed`. So a run resumed mid-epoch replays exactly the same batches and augmentations,
with any number of DataLoader workers, without saving worker RNG state.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from kcomp.data.batched import ThreadedReads, split_entry
from kcomp.data.images import chw_tensor, read_rgb


class SeededSampler(Sampler):
    def __init__(self, n: int, *, seed: int, shuffle: bool = True, num_replicas: int = 1, rank: int = 0) -> None:
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self.num_replicas, self.rank = num_replicas, rank
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """`start` is the number of this replica's samples already consumed in the epoch (for resume)."""
        self.epoch, self.start = epoch, start

    def draw(self, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """This epoch's samples in order, and each draw's augmentation seed (`kcomp.data.balance` draws others)."""
        perm = torch.randperm(self.n, generator=g) if self.shuffle else torch.arange(self.n)
        seeds = torch.randint(0, 2**31 - 1, (self.n,), generator=g)
        return perm, seeds[perm]

    def _order(self) -> tuple[torch.Tensor, torch.Tensor]:
        order, seeds = self.draw(torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch))
        total = self.per_replica * self.num_replicas
        if total > self.n:  # pad so every replica sees the same number of samples
            order, seeds = torch.cat([order, order[: total - self.n]]), torch.cat([seeds, seeds[: total - self.n]])
        return order[self.rank :: self.num_replicas], seeds[self.rank :: self.num_replicas]

    @property
    def per_replica(self) -> int:
        return -(-self.n // self.num_replicas)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        idx, seeds = self._order()
        yield from zip(idx[self.start :].tolist(), seeds[self.start :].tolist(), strict=True)

    def __len__(self) -> int:
        return self.per_replica - self.start


class ImageDataset(ThreadedReads, Dataset):
    """RGB images with optional targets: class indices, or float rows (soft or packed targets, a (N, K) array);
    returns (uint8 CxHxW tensor, target or -1)."""

    def __init__(self, files: Sequence[Path], targets: Sequence[int] | np.ndarray | None,
                 transform: Callable[..., Any], reduce_to: int | None = None,
                 cache: Sequence[np.ndarray] | None = None) -> None:
        """`cache[i]`, when given, is files[i] already decoded (`kcomp.data.image_cache`)."""
        self.files, self.targets, self.transform, self.reduce_to = list(files), targets, transform, reduce_to
        self.cache = cache

    def __len__(self) -> int:
        return len(self.files)

    def read(self, idx: int) -> np.ndarray:
        return self.cache[idx] if self.cache is not None else read_rgb(self.files[idx], self.reduce_to)

    def item(self, entry: int | tuple[int, int], img: np.ndarray) -> tuple[torch.Tensor, int | torch.Tensor]:
        idx, seed = split_entry(entry)
        if seed is not None:
            self.transform.set_random_seed(seed)
        img = self.transform(image=img)["image"]
        x = chw_tensor(img)
        if self.targets is None:
            return x, -1
        t = self.targets[idx]
        return x, (torch.from_numpy(t) if isinstance(t, np.ndarray) else int(t))

    def targets_array(self) -> np.ndarray:
        return np.asarray(self.targets if self.targets is not None else [-1] * len(self.files), dtype=np.int64)

"""Class balance for cls training (`--class-weights balanced`, `--sampler balanced`), from the fold's training rows.

Both use sklearn's "balanced" weighting, n / (k x count of the class): the loss weighs each class so, or the sampler
draws each row with the weight of its class, so that every class is drawn equally often in expectation. The
sampler is torch's `WeightedRandomSampler` (with replacement, an epoch's worth of rows) drawing from the epoch's
seeded generator, inside `SeededSampler`'s replay contract: the draw depends on (seed, epoch) only, so a resumed
run draws the same rows, and under DDP each rank takes every world-th draw of the same sequence.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import WeightedRandomSampler

from kcomp.data.datasets import SeededSampler


def class_labels(targets: np.ndarray, n_classes: int) -> np.ndarray:
    """Each training row's class: the index itself, or the largest of the label columns of a float target row (soft
    pseudo labels; packed [labels | teacher] rows, whose first `n_classes` columns are the labels)."""
    t = np.asarray(targets)
    return t.astype(np.int64) if t.ndim == 1 else t[:, :n_classes].argmax(1)


def balanced_class_weights(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """sklearn's `compute_class_weight("balanced")`: n / (k x count) per class, float32. A class without rows has
    no weight to give (the cls task refuses such folds first)."""
    counts = np.bincount(labels, minlength=n_classes)
    if (counts == 0).any():
        raise ValueError(f"class {int(np.argmin(counts))} has no training row")
    return (len(labels) / (n_classes * counts)).astype(np.float32)


class BalancedSampler(SeededSampler):
    """Rows drawn with replacement, each with its class's balanced weight: classes equally likely per draw."""

    def __init__(self, labels: np.ndarray, n_classes: int, *, seed: int, num_replicas: int = 1,
                 rank: int = 0) -> None:
        super().__init__(len(labels), seed=seed, num_replicas=num_replicas, rank=rank)
        self.weights = torch.from_numpy(balanced_class_weights(labels, n_classes)[labels]).double()

    def draw(self, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        rows = torch.tensor(list(WeightedRandomSampler(self.weights, self.n, replacement=True, generator=g)))
        return rows, torch.randint(0, 2**31 - 1, (self.n,), generator=g)  # a seed per draw: repeats differ


def train_sampler(kind: str | None, dataset: Any, n_classes: int, *, seed: int, num_replicas: int,
                  rank: int) -> SeededSampler:
    """`--sampler`: None shuffles the rows once per epoch; "balanced" draws the classes of `dataset.targets`
    equally."""
    if kind == "balanced":
        return BalancedSampler(class_labels(dataset.targets, n_classes), n_classes, seed=seed,
                               num_replicas=num_replicas, rank=rank)
    return SeededSampler(len(dataset), seed=seed, num_replicas=num_replicas, rank=rank)

"""Batched reads for map-style datasets: a batch's files decoded on one thread per core in the main process.

DataLoader fetches a whole batch through `__getitems__` when a dataset has one. Where it runs in the main process
(inference on a CPU, where worker processes would only preempt the model's threads, and `--workers 0`), decoding the
batch item by item leaves every core but one idle between forward passes; on a thread per core Cassava-like 800x600
JPEGs decode in well under that wall time (OpenCV and libjpeg release the GIL; `tta from JPEGs` in
benchmarks/RESULTS.md). In a DataLoader worker process the reads stay serial: the workers already divide the cores
between them.

Only the read runs on the pool. Augmentation and conversion run in the calling thread, in batch order, so seeded
augmentations (one albumentations pipeline per dataset, re-seeded per item) give the same items as `__getitem__`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

T = TypeVar("T")
_pool: tuple[int, Any] | None = None  # (pid, ThreadPoolExecutor): a forked child must not use its parent's


def split_entry(entry: int | tuple[int, int]) -> tuple[int, int | None]:
    """(row, augmentation seed or None) of a sampler entry: an index, or `SeededSampler`'s (index, seed)."""
    return entry if isinstance(entry, tuple) else (entry, None)


def thread_map(fn: Callable[[int], T], indices: Sequence[int]) -> list[T]:
    """fn over indices, in order; on a thread per core in the main process, in this thread anywhere else."""
    from kcomp.data.pool import default_workers

    cores = default_workers()
    if len(indices) < 2 or cores < 2 or _in_loader_worker():
        return [fn(i) for i in indices]
    return list(_executor(cores).map(fn, indices))


def _in_loader_worker() -> bool:
    from torch.utils.data import get_worker_info

    return get_worker_info() is not None


def _executor(threads: int) -> Any:
    global _pool
    if _pool is None or _pool[0] != os.getpid():
        from concurrent.futures import ThreadPoolExecutor

        _pool = (os.getpid(), ThreadPoolExecutor(threads, thread_name_prefix="kcomp-read"))
    return _pool[1]


class ThreadedReads:
    """Mixin for datasets whose item is `self.item(entry, self.read(index))`. `read` decodes one row's file and
    may run on any thread (no shared mutable state); `item` augments and converts in the calling thread."""

    @property
    def threaded(self) -> bool:
        """Reads from a decoded-image cache (`self.cache`) are memory copies: threads would only cost there."""
        return getattr(self, "cache", None) is None

    def read(self, idx: int) -> Any:
        raise NotImplementedError

    def item(self, entry: Any, raw: Any) -> Any:
        raise NotImplementedError

    def __getitem__(self, entry: Any) -> Any:
        return self.item(entry, self.read(split_entry(entry)[0]))

    def __getitems__(self, entries: Sequence[Any]) -> list[Any]:
        indices = [split_entry(e)[0] for e in entries]
        raws = thread_map(self.read, indices) if self.threaded else [self.read(i) for i in indices]
        return [self.item(e, r) for e, r in zip(entries, raws, strict=True)]

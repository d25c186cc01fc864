"""Batched prediction over a DataLoader, shared by validation, `oof` and `tta`."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from kcomp import console
from kcomp.data.pool import default_workers


def loader_workers(workers: int, device: torch.device, ds: Dataset | None = None) -> int:
    """DataLoader workers worth starting for inference: on the CPU only as many as there are cores the model's
    intra-op threads leave free. Forward passes keep every core busy there, so worker processes only preempt the
    model's threads mid-operation, while reading in-process costs what it would in a worker (ink tiles, JPEGs
    decoded on a thread per core between forward passes by `kcomp.data.batched`, and the `prep --size` cache all
    come closer to the model-only speed in-process: the loop sections of benchmarks/RESULTS.md).

    A dataset reading the decoded-image cache (`threaded` False) always reads in-process on a CPU: its reads are
    memory copies, and a worker costs more to start and feed than it saves, even on a core torch leaves free
    (`bench_loop.py`)."""
    if device.type != "cpu":
        return workers
    if ds is not None and not getattr(ds, "threaded", True):
        return 0
    return max(0, min(workers, default_workers() - torch.get_num_threads()))


def inference_loader(ds: Dataset, *, batch_size: int, workers: int, device: torch.device) -> DataLoader:
    """In order, pinned for an accelerator, workers only where they add cores (`loader_workers`)."""
    return DataLoader(ds, batch_size=batch_size, num_workers=loader_workers(workers, device, ds),
                      pin_memory=device.type == "cuda")


@torch.inference_mode()
def predict_loader(models: Sequence[torch.nn.Module], loader: DataLoader, task: Any, *, tta: int,
                   device: torch.device, dtype: torch.dtype | None, channels_last: bool = True,
                   label: str | None = None, scales: Sequence[float] = (1.0,)) -> list[np.ndarray]:
    """Each model's predictions, from one pass over the loader: every batch is read, decoded and copied to the
    device once, whatever the number of models (the folds of a run at test time). Each batch's outputs go to the
    host as they are made, without waiting (pinned memory, `HostStage`): a seg validation's float maps would
    otherwise pile up on the GPU (~2.6 GB a Clouds fold at 384 px, twice that for the final concatenation).
    `scales`: multi-scale TTA (`Task.predict`)."""
    from kcomp.runtime.host_stage import HostStage

    for model in models:
        model.eval()
    keep = (lambda a: [a.copy()]) if device.type == "cuda" else (lambda a: [a])  # pinned buffers go back
    stages = [HostStage(keep) for _ in models]
    total = len(loader.dataset)  # type: ignore[arg-type]
    ctx = console.progress(total, label) if label else _null_bar()
    with ctx as bar:
        for x, _ in loader:
            x = x.to(device, non_blocking=True)
            if channels_last and x.ndim == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                for model, stage in zip(models, stages, strict=True):
                    stage.submit(task.predict(model, x, tta, scales).float())
            bar.advance(x.shape[0])
    outs = [stage.results() for stage in stages]
    return [np.concatenate(out) if out else np.zeros((0,), dtype=np.float32) for out in outs]


# At most this many models predict each batch together (`predict_in_groups`), and on a GPU only as many as fit in a
# quarter of its memory: a run's folds (x best+last) and their activations must not fill it.
MODELS_TOGETHER = 10


def predict_in_groups(models: Iterable[torch.nn.Module], loader: DataLoader, task: Any, *, tta: int,
                      device: torch.device, dtype: torch.dtype | None, labels: Sequence[str],
                      scales: Sequence[float] = (1.0,)) -> Iterator[np.ndarray]:
    """Each model's predictions, in order, from as few passes over the loader as the models' memory allows: a
    group of models predicts each batch together (`predict_loader`), and a group is released before the next one
    is built (`models` may build each model when asked for it)."""
    it = iter(models)
    done = 0
    while True:
        first = next(it, None)
        if first is None:
            return
        group = [first, *itertools.islice(it, _group_size(first, device) - 1)]
        names = list(labels[done:done + len(group)])
        preds = predict_loader(group, loader, task, tta=tta, device=device, dtype=dtype, label=shared_label(names),
                               scales=scales)
        done += len(group)
        del first, group  # before the next group is built
        yield from preds


def _group_size(model: torch.nn.Module, device: torch.device) -> int:
    if device.type != "cuda":
        return MODELS_TOGETHER
    size = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    budget = torch.cuda.get_device_properties(device).total_memory // 4
    return max(1, min(MODELS_TOGETHER, budget // max(1, size)))


def shared_label(labels: Sequence[str]) -> str:
    """One progress label for several models predicting each batch together."""
    if len(labels) == 1:
        return labels[0]
    return f"{labels[0]} + {len(labels) - 1} more model{'s' if len(labels) > 2 else ''}"


class _null_bar:  # noqa: N801 - used like the context manager it stands in for
    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def advance(self, n: float = 1, **fields: Any) -> None:
        return None

"""Optional TensorBoard event files per fold (RUN/foldK/tb/), written only when the `tensorboard` package is
installed (`pip install 'kcomp[tb]'`); metrics.parquet and train.log stay the record either way."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from kcomp.artifacts import paths

_WRITERS: dict[str, Any] = {}  # one writer per fold dir for the life of the process (`--fold all` trains several)


def open_writer(run_dir: str | Path, fold: int) -> Any | None:
    """A SummaryWriter logging to RUN/foldK/tb, or None when tensorboard is not installed."""
    if importlib.util.find_spec("tensorboard") is None:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # torch's shim refuses too-old tensorboard versions
        return None
    return SummaryWriter(log_dir=str(paths.fold_dir(run_dir, fold) / "tb"))


def log_epoch(run_dir: str | Path, fold: int, row: dict[str, Any]) -> None:
    """Every numeric value of a metrics row (train_loss, val_<metric>, lr, img_per_s, ...) at step = epoch."""
    key = str(paths.fold_dir(run_dir, fold))
    if key not in _WRITERS:
        _WRITERS[key] = open_writer(run_dir, fold)
    writer = _WRITERS[key]
    if writer is None:
        return
    for name, value in row.items():
        if name != "epoch" and isinstance(value, int | float) and not isinstance(value, bool):
            writer.add_scalar(name, value, global_step=int(row["epoch"]))
    writer.flush()

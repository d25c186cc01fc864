"""Checkpoints: plain dicts of tensors and primitives, so they load with `torch.load(weights_only=True)`."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from kcomp.artifacts._atomic import atomic_write_bytes
from kcomp.artifacts._input import regular_file
from kcomp.artifacts._meta import check_meta, make_meta
from kcomp.errors import BadInput


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    import torch

    buf = io.BytesIO()
    torch.save({**make_meta("checkpoint"), **state}, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | Path, *, task: str | None = None, map_location: str = "cpu") -> dict[str, Any]:
    """Load safely; a pickled object, a truncated file or another task's checkpoint is a clear error."""
    state = load_weights_file(path, map_location=map_location)
    check_meta(state if isinstance(state, dict) else None, "checkpoint", str(path))
    if task is not None and state.get("task") != task:
        raise BadInput(f"is a checkpoint of task {state.get('task')!r}, not {task!r}", path=path)
    return state


def model_state(path: str | Path, *, task: str, prefer_ema: bool = False) -> dict[str, Any]:
    """The weights a prediction uses (best.pt's model; last.pt's EMA when it has one), refused when they hold NaN
    or inf: a diverged run would otherwise write NaN predictions that every later reader rejects."""
    import torch

    ck = load_checkpoint(path, task=task)
    state = (ck.get("ema") if prefer_ema else None) or ck.get("model")
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BadInput("holds no model weights (a state dict of tensors under 'model')", path=path)
    for name, t in state.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise BadInput(f"weights hold NaN or inf (first in {name}): training diverged; retrain with a lower --lr",
                           path=path)
    return state


def load_weights_file(path: str | Path, *, map_location: str = "cpu") -> Any:
    """`torch.load(weights_only=True)` with the failure modes turned into one-line errors."""
    import pickle

    import torch

    p = regular_file(path, "a torch checkpoint (.pt)")
    with open(p, "rb") as f:
        head = f.read(4)
    if head != b"PK\x03\x04" and head[:1] != b"\x80":  # torch.save: a zip archive, or (legacy) a pickle
        raise BadInput(f"not a readable torch checkpoint: not a file torch.save wrote (starts with {head!r})", path=p)
    try:
        return torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise BadInput("refused: contains pickled objects (only weights-only checkpoints are loaded)", path=p) from e
    except (RuntimeError, EOFError, ValueError, OSError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise BadInput(f"not a readable torch checkpoint (truncated or corrupt?): {first}", path=p) from e

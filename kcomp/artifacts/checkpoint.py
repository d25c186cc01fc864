"""Checkpoints: plain dicts of tensors and primitives, so they load with `torch.load(weights_only=True)`."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from kcomp.artifacts._atomic import atomic_write_bytes
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


def load_weights_file(path: str | Path, *, map_location: str = "cpu") -> Any:
    """`torch.load(weights_only=True)` with the failure modes turned into one-line errors."""
    import pickle

    import torch

    p = Path(path)
    if not p.is_file():
        raise BadInput("no such file", path=p)
    try:
        return torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise BadInput("refused: contains pickled objects (only weights-only checkpoints are loaded)", path=p) from e
    except (RuntimeError, EOFError, ValueError, OSError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise BadInput(f"not a readable torch checkpoint (truncated or corrupt?): {first}", path=p) from e

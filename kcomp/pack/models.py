"""PKG/models/<run>/: what inference reads from a run and nothing else. A run directory holds, per fold, last.pt
with the optimizer state (Adam: twice the weights), the raw and EMA weights, RNG states and history; inference
needs only the evaluated weights (best.pt's, EMA when used), the config and the task setup."""

from __future__ import annotations

import io
import shutil
from pathlib import Path
from typing import Any

from kcomp.artifacts import atomic_write_bytes, paths
from kcomp.artifacts.checkpoint import load_checkpoint
from kcomp.pack.chain import PackedRun

# what `tta` reads from a checkpoint besides the weights (and what tells a reader what the file is)
KEEP = ("kcomp_version", "schema", "command", "task", "config", "setup", "fold", "epoch", "metric", "score")
FP16_MAX = 65504.0


def pack_run(run: PackedRun, dest: Path, *, half: bool) -> list[Path]:
    """Copy config.json and write each trained fold's stripped best.pt (and last.pt where a recorded step predicts
    with `--checkpoints last` or `best+last`); returns the files written."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(paths.config(run.source), paths.config(dest))
    written = [paths.config(dest)]
    for fold in paths.trained_folds(run.source):
        for which in sorted(run.checkpoints | {"best"}):  # best.pt marks a trained fold, so it always goes
            src = (paths.best_checkpoint if which == "best" else paths.last_checkpoint)(run.source, fold)
            out = (paths.best_checkpoint if which == "best" else paths.last_checkpoint)(dest, fold)
            out.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(out, _stripped(load_checkpoint(src), half=half))
            written.append(out)
    return written


def _stripped(ck: dict[str, Any], *, half: bool) -> bytes:
    """The evaluated weights (last.pt: its EMA when there is one, as `tta --checkpoints last` uses) and the keys
    `tta` reads; optionally fp16. Loads with `weights_only=True` like any kcomp checkpoint."""
    import torch

    weights = ck.get("ema") or ck["model"]
    if half:
        weights = {k: _half(v) for k, v in weights.items()}
    out = {k: ck[k] for k in KEEP if k in ck}
    out.update(model=weights, packed={"half": half})
    buf = io.BytesIO()
    torch.save(out, buf)
    return buf.getvalue()


def _half(t: Any) -> Any:
    """fp16 halves the file; a tensor fp16 cannot hold (|x| > 65504) stays float32. Models widen the weights back
    to their own dtype when loading (`kcomp.models.build_with_weights`)."""
    import torch

    if not isinstance(t, torch.Tensor) or t.dtype not in (torch.float32, torch.float64):
        return t
    if t.numel() and float(t.abs().max()) > FP16_MAX:
        return t
    return t.half()


def tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())

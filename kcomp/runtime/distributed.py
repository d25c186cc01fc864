"""Data-parallel plumbing: who this process is (torchrun's RANK/WORLD_SIZE/LOCAL_RANK), the process group, and the
few collectives `train`, `oof` and `tta` need.

Without torchrun (or with a world of one) every helper is a no-op that returns its input, so the single-process
path computes exactly what it did before DDP existed. torch is imported inside functions: commands read `rank()`
at start-up, and `kcomp --help` must not pay for torch.distributed.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from typing import Any

# The process group this module opened (and must close), and the gloo group used for host-side control messages
# (stop flags, python objects) so that, under NCCL, they never wait on a CUDA stream.
_STATE: dict[str, Any] = {"owned": False, "ctrl": None}


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def rank() -> int:
    return _env_int("RANK", 0)


def world_size() -> int:
    return _env_int("WORLD_SIZE", 1)


def local_rank() -> int:
    return _env_int("LOCAL_RANK", 0)


def under_torchrun() -> bool:
    """True in a worker started by torchrun (or any launcher setting the env:// variables)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def is_distributed() -> bool:
    return under_torchrun() and world_size() > 1


def replica() -> tuple[int, int]:
    """(number of replicas, this replica's rank) for samplers: (1, 0) outside a multi-process run."""
    return (world_size(), rank()) if is_distributed() else (1, 0)


def is_main() -> bool:
    """Only rank 0 writes files, logs and prints paths."""
    return rank() == 0


def local_device(device: Any) -> Any:
    """The device this process computes on, made its current CUDA device. One GPU per process: `cuda` becomes
    `cuda:LOCAL_RANK` under torchrun, modulo the GPUs this process sees (SLURM with one GPU bound per task shows
    every task its own GPU as cuda:0, whatever its local rank); CPU stays CPU."""
    import torch

    from kcomp.runtime.device import use_device

    if is_distributed() and device.type == "cuda":
        device = torch.device("cuda", local_rank() % max(1, torch.cuda.device_count()))
    return use_device(device)


@contextlib.contextmanager
def session(device_type: str) -> Iterator[None]:
    """Join the process group for the duration of a command: NCCL on CUDA, gloo on CPU. Ranks other than 0 are
    made quiet (no progress bars or logs), so a terminal shows one set of bars. Re-entrant: an inner session
    reuses the outer one's group."""
    if not is_distributed():
        yield
        return
    import torch
    import torch.distributed as dist

    from kcomp import console

    opened = False
    if not dist.is_initialized():
        if device_type == "cuda":
            torch.cuda.set_device(local_rank() % max(1, torch.cuda.device_count()))
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
        _STATE["ctrl"] = dist.new_group(backend="gloo") if device_type == "cuda" else None
        _STATE["owned"] = opened = True
    if not is_main():
        console.set_quiet(True)
    try:
        yield
    finally:
        if opened:
            _STATE.update(owned=False, ctrl=None)
            dist.destroy_process_group()


def _active() -> bool:
    if not is_distributed():
        return False
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def barrier() -> None:
    if _active():
        import torch.distributed as dist

        dist.barrier(group=_STATE["ctrl"])


def any_flag(flag: bool) -> bool:
    """True on every rank when it is true on any: all ranks stop (and save) at the same optimizer step."""
    if not _active():
        return flag
    import torch
    import torch.distributed as dist

    t = torch.tensor([int(flag)], dtype=torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=_STATE["ctrl"])
    return bool(t.item())


def mean_(tensor: Any) -> Any:
    """Average a tensor over ranks in place (the running training loss); returns it."""
    if _active():
        import torch.distributed as dist

        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor /= world_size()
    return tensor


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order (a one-element list without DDP)."""
    if not _active():
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj, group=_STATE["ctrl"])
    return out


def broadcast_module(module: Any, src: int = 0) -> None:
    """Copy rank `src`'s parameters and buffers into every rank's module (in place). DDP keeps parameters equal,
    but each rank's BatchNorm statistics (and so its EMA of them) follow its own data; validating or saving
    after this makes every rank hold the weights rank 0 writes."""
    if not _active():
        return
    import torch
    import torch.distributed as dist

    with torch.no_grad():
        for t in module.state_dict().values():
            if isinstance(t, torch.Tensor):
                dist.broadcast(t, src)


def shard_range(n: int) -> tuple[int, int]:
    """This rank's contiguous share [lo, hi) of n rows; shares differ by at most one row and keep row order, so
    concatenating them in rank order gives back range(n)."""
    world, r = (world_size(), rank()) if _active() else (1, 0)
    base, extra = divmod(n, world)
    lo = r * base + min(r, extra)
    return lo, lo + base + (1 if r < extra else 0)


def concat(parts: Sequence[Any]) -> Any:
    """Join per-rank predictions in rank order: arrays along the first axis, lists end to end, containers with a
    `concat` classmethod (det `Boxes`) by it. Empty shares (more ranks than rows) are skipped; None marks a rank
    that had no rows."""
    import numpy as np

    kept = [p for p in parts if p is not None and len(p) > 0]
    if not kept:
        return next((p for p in parts if p is not None), None)
    if isinstance(kept[0], np.ndarray):
        return kept[0] if len(kept) == 1 else np.concatenate(kept, axis=0)
    if hasattr(kept[0], "concat"):
        return type(kept[0]).concat(kept)
    return [item for p in kept for item in p]


def gather_to_main(part: Any) -> Any:
    """Every rank's share joined in rank order on rank 0, None on the others (a seg validation's maps need not
    travel to every rank, only the score does: `broadcast_object`)."""
    if not _active():
        return part
    import torch.distributed as dist

    out: list[Any] | None = [None] * world_size() if is_main() else None
    dist.gather_object(part, out, dst=0, group=_STATE["ctrl"])
    return concat(out) if out is not None else None


def broadcast_object(obj: Any) -> Any:
    """Rank 0's `obj` on every rank."""
    if not _active():
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0, group=_STATE["ctrl"])
    return box[0]


def gather_concat(part: Any) -> Any:
    """Every rank's share of a prediction, joined in rank order, on every rank."""
    if not _active():
        return part
    return concat(all_gather_object(part))


def shard_dataset(dataset: Any) -> Any:
    """This rank's contiguous slice of a dataset (the dataset itself without DDP)."""
    if not _active():
        return dataset
    from torch.utils.data import Subset

    lo, hi = shard_range(len(dataset))
    return Subset(dataset, range(lo, hi))


def wrap_ddp(model: Any, device: Any) -> Any:
    """DistributedDataParallel around `model` (which stays the module that is saved and evaluated)."""
    if not _active():
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def no_sync(step_model: Any, skip: bool) -> Any:
    """Skip the gradient all-reduce on accumulation micro-batches that do not end in an optimizer step."""
    if skip and _active():
        from torch.nn.parallel import DistributedDataParallel

        if isinstance(step_model, DistributedDataParallel):
            return step_model.no_sync()
    return contextlib.nullcontext()


def sync_batchnorm(model: Any, device: Any) -> Any:
    """BatchNorm statistics over the global batch (timm's converter keeps BatchNormAct's activation)."""
    if not is_distributed():
        return model
    from kcomp.errors import BadUsage

    if device.type != "cuda":
        raise BadUsage("--sync-bn needs CUDA devices: torch's SyncBatchNorm has no CPU implementation")
    from timm.layers import convert_sync_batchnorm

    return convert_sync_batchnorm(model)


def seed_rank(seed: int, deterministic: bool) -> None:
    """Per-rank global RNG (dropout, drop path) after the model is built with the shared seed: ranks draw
    different masks, reproducibly. Augmentations need nothing: their seeds come per sample from the sampler."""
    if is_distributed():
        from kcomp.runtime.device import seed_everything

        seed_everything(seed + 1_000_003 * (rank() + 1), deterministic)

"""Device, precision, seeding and RNG state: the parts of a run that differ between a laptop CPU and a GPU box."""

from __future__ import annotations

import contextlib
import os
import random
import re
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from kcomp.errors import BadUsage


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise BadUsage(f"--device {name}: CUDA is not available on this machine (use --device cpu)")
    if not (name == "cpu" or name.startswith("cuda")):
        raise BadUsage(f"--device {name}: expected auto, cpu, cuda or cuda:N")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise BadUsage(f"--device {name}: expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise BadUsage(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def amp_dtype(device: torch.device, amp: str = "auto") -> torch.dtype | None:
    """bf16 where the GPU has it (no loss scaling needed), fp16 with a GradScaler otherwise, fp32 on CPU.

    "Has it" means compute capability 8.0 or later (Ampere on) of the device this process uses: before that,
    `torch.cuda.is_bf16_supported()` also counts emulation (sm_75: T4, RTX 20xx), which has no fast conv kernels."""
    if amp == "off":
        return None
    if amp == "bf16":
        return torch.bfloat16
    if amp == "fp16":
        if device.type != "cuda":
            raise BadUsage("--amp fp16 needs a CUDA device")
        return torch.float16
    if amp != "auto":
        raise BadUsage(f"--amp {amp}: expected auto, bf16, fp16 or off")
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.get_device_capability(device) >= (8, 0) else torch.float16


def use_device(device: torch.device) -> torch.device:
    """Make `device` this process's current CUDA device (a no-op elsewhere), so that work queued without an explicit
    device (streams, events, RNG state, cuDNN handles) goes to it and not to cuda:0."""
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)
    return device


def configure_backends(device: torch.device, deterministic: bool = False) -> None:
    """Fast kernels for the device: cuDNN picks the fastest convolution per input shape (not with --deterministic,
    whose point is the same algorithm every run) and float32 matmuls use TF32 tensor cores (Ampere on; cuDNN
    convolutions already do by default). Nothing changes on a CPU."""
    torch.backends.cudnn.benchmark = not deterministic
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed every global RNG. With `deterministic`, torch uses deterministic kernels wherever one exists; ops that
    have none on CUDA (the backward of bilinear upsampling and of adaptive average pooling, in seg and ink decoders)
    run anyway, and the first time each one runs a line on stderr names it, instead of the run crashing in its first
    backward (`use_deterministic_algorithms(warn_only=True)`)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        _say_nondeterministic_ops_once()


_NONDETERMINISTIC = re.compile(r"(\S+) does not have a deterministic implementation")
_SAID: set[str] = set()


def _say_nondeterministic_ops_once() -> None:
    """torch warns on every call of an op without a deterministic kernel, in a paragraph; say it once per op, in
    one line. Other warnings go where they went."""
    import warnings

    shown = warnings.showwarning
    if getattr(shown, "_kcomp", False):
        return

    def show(message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
        found = _NONDETERMINISTIC.search(str(message))
        if found is None:
            shown(message, category, filename, lineno, file, line)
            return
        op = found.group(1)
        if op not in _SAID:
            from kcomp import console

            _SAID.add(op)
            console.log(f"[yellow]--deterministic: {op} has no deterministic kernel on this device; it runs "
                        f"nondeterministically (results may differ between identical runs in the last bits)")

    show._kcomp = True  # type: ignore[attr-defined]
    warnings.showwarning = show
    warnings.filterwarnings("always", message=r".* does not have a deterministic implementation")


def rng_state() -> dict[str, Any]:
    """Every global RNG, in a form `torch.load(weights_only=True)` accepts (no numpy objects)."""
    np_state = np.random.get_state(legacy=False)
    return {
        "python": random.getstate(),
        "numpy": {"key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                  "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                  "gauss": float(np_state["gauss"])},
        "torch": torch.get_rng_state(),
        # this process's own device only: a run resumed where fewer GPUs are visible must still find its state
        "cuda": [torch.cuda.get_rng_state()] if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state({"bit_generator": "MT19937",
                         "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
                         "has_gauss": n["has_gauss"], "gauss": n["gauss"]})
    torch.set_rng_state(state["torch"])
    saved = state["cuda"]
    if saved and torch.cuda.is_available():
        # one state, this process's device's; checkpoints of earlier kcomp hold every visible GPU's, by index
        own = torch.cuda.current_device()
        torch.cuda.set_rng_state(saved[own] if len(saved) > 1 and own < len(saved) else saved[0])


def step_generator(seed: int, epoch: int, step: int) -> torch.Generator:
    """A generator that depends only on where we are in training, so resumed runs draw the same numbers."""
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 1_000_033 + step)


def resolve_workers(workers: int | None, device: torch.device, processes: int = 1) -> int:
    """`--workers`, or its default: 2 on a CPU (the model's threads want the cores there); on a GPU the cores this
    process may use shared among the processes on this node, up to 8 (decoding and augmenting for a GPU takes
    several cores a model; more workers than that mostly cost memory and start-up)."""
    if workers is not None:
        return workers
    if device.type != "cuda":
        return 2
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(2, min(8, cores // max(1, processes)))


def describe(device: torch.device, dtype: torch.dtype | None, processes: int, asked: str = "auto") -> str:
    """The start-up line: where this command computes, at which precision, in how many processes. `auto` that
    found no GPU says so, instead of falling back to the CPU silently."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        gib = torch.cuda.get_device_properties(device).total_memory / 2**30
        where = f"{device} ({torch.cuda.get_device_name(device)}, sm_{major}{minor}, {gib:.0f} GiB)"
    else:
        found = " (--device auto found no CUDA GPU)" if asked == "auto" else ""
        where = f"cpu{found}, {torch.get_num_threads()} threads"
    amp = {None: "off (float32)", torch.bfloat16: "bf16", torch.float16: "fp16 + GradScaler"}[dtype]
    return f"device {where}; amp {amp}; {processes} process{'es' if processes > 1 else ''}"


@contextlib.contextmanager
def out_of_memory_as_error(device: torch.device, batch_size: int, hint: str = "") -> Iterator[None]:
    """A CUDA out-of-memory error becomes one line naming the option to lower (exit 1), not a traceback."""
    try:
        yield
    except torch.OutOfMemoryError:
        from kcomp.errors import EnvironmentFailure

        where = str(device)
        if device.type == "cuda":
            where += f" ({torch.cuda.get_device_properties(device).total_memory / 2**30:.0f} GiB)"
        raise EnvironmentFailure(f"out of GPU memory on {where} at --batch-size {batch_size}: re-run with a lower "
                                 f"--batch-size{hint}") from None


def to_device(obj: Any, device: torch.device) -> Any:
    """A tensor, or lists, tuples and dicts of them (a collate's targets), copied to `device` without waiting (the
    loader pinned them)."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device) for v in obj)
    return obj

"""Device, precision, seeding and RNG state: the parts of a run that differ between a laptop CPU and a GPU box."""

from __future__ import annotations

import os
import random
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
    """bf16 where the GPU has it (no loss scaling needed), fp16 with a GradScaler otherwise, fp32 on CPU."""
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
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True


def rng_state() -> dict[str, Any]:
    """Every global RNG, in a form `torch.load(weights_only=True)` accepts (no numpy objects)."""
    np_state = np.random.get_state(legacy=False)
    return {
        "python": random.getstate(),
        "numpy": {"key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                  "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                  "gauss": float(np_state["gauss"])},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state({"bit_generator": "MT19937",
                         "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
                         "has_gauss": n["has_gauss"], "gauss": n["gauss"]})
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def step_generator(seed: int, epoch: int, step: int) -> torch.Generator:
    """A generator that depends only on where we are in training, so resumed runs draw the same numbers."""
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 1_000_033 + step)

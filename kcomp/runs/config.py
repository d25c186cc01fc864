"""Layered run configuration: library defaults, then the options given on the command line (None = default)."""

from __future__ import annotations

from typing import Any

from kcomp.errors import BadUsage, ConfigMismatch

DEFAULTS: dict[str, Any] = {
    "task": "cls",
    "folds": None,
    "target": None,
    "model": "resnet18",
    "img_size": 224,
    "epochs": 10,
    "batch_size": 32,
    "lr": 1e-3,
    "weight_decay": 0.05,
    "warmup_epochs": 1.0,
    "min_lr_ratio": 0.01,
    "accum": 1,
    "loss": "ce",
    "smoothing": 0.0,
    "t1": 0.8,
    "t2": 1.4,
    "taylor_n": 2,
    "mixup": 0.0,
    "cutmix": 0.0,
    "mix_prob": 1.0,
    "ema": 0.0,
    "aug": "medium",
    "drop_rate": 0.0,
    "drop_path": 0.0,
    "weights": None,
    "metric": None,
    "val_tta": 1,
    # task seg
    "arch": "unet",
    "seg_loss": "bce_dice",
    # task ink
    "layers": "5x7",
    "layer_start": None,
    "patch": 224,
    "stride": None,
    "layer_shift": 2,
    "neg_fraction": 1.0,
    "infer_stride": None,
    "seed": 42,
    "deterministic": False,
    "amp": "auto",
    "channels_last": True,
    "sync_bn": False,  # BatchNorm statistics over all ranks' batches (DDP on CUDA only)
    # below: how to run, not what to compute; they may change between a run and its resume
    "device": "auto",
    "workers": 2,
    "compile": False,
    "save_every": 0,
    "log_every": 50,
    # data-parallel processes per node and nodes (`--gpus`, `--nodes`): recorded, but free to differ between
    # folds; a fold's last.pt records its world size and resumes only with the same one (the global batch)
    "gpus": 1,
    "nodes": 1,
}
# Where a task's sensible default differs (applied under the command line): a seg batch costs several times a
# classifier's at the same size, and short runs on small data need optimizer steps more than large batches.
TASK_DEFAULTS: dict[str, dict[str, Any]] = {"seg": {"batch_size": 8}}
RUNTIME_KEYS = frozenset({"device", "workers", "compile", "save_every", "log_every", "gpus", "nodes"})


def resolve(**overrides: Any) -> dict[str, Any]:
    unknown = sorted(set(overrides) - set(DEFAULTS))
    if unknown:
        raise BadUsage(f"unknown training option(s): {', '.join(unknown)}")
    given = {k: v for k, v in overrides.items() if v is not None}
    cfg = {**DEFAULTS, **TASK_DEFAULTS.get(given.get("task", DEFAULTS["task"]), {}), **given}
    _check(cfg)
    return cfg


def _check(cfg: dict[str, Any]) -> None:
    for key in ("epochs", "batch_size", "img_size", "accum"):
        if int(cfg[key]) < 1:
            raise BadUsage(f"--{key.replace('_', '-')} {cfg[key]}: must be at least 1")
    if cfg["lr"] <= 0:
        raise BadUsage(f"--lr {cfg['lr']}: must be positive")
    if not 0 <= cfg["smoothing"] < 1:
        raise BadUsage(f"--smoothing {cfg['smoothing']}: must be in [0, 1)")
    if not 0 <= cfg["ema"] < 1:
        raise BadUsage(f"--ema {cfg['ema']}: decay must be in [0, 1) (0 disables EMA)")


def differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Keys that change what a run computes; runtime keys are free to differ on resume. A key the saved run does
    not know (a newer kcomp added it) counts as its default, so upgrading kcomp does not orphan runs."""
    keys = (set(saved) | set(current)) - RUNTIME_KEYS
    return sorted(k for k in keys if saved.get(k, DEFAULTS.get(k)) != current.get(k, DEFAULTS.get(k)))


def require_same(saved: dict[str, Any], current: dict[str, Any], where: str) -> None:
    diff = differences(saved, current)
    if diff:
        shown = "; ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in diff[:6])
        raise ConfigMismatch(f"run was started with other options ({shown}); use another -o RUN or the same options",
                             path=where)

"""Layered run configuration: library defaults, then the options given on the command line (None = default)."""

from __future__ import annotations

from typing import Any

from kcomp import options
from kcomp.errors import BadUsage, ConfigMismatch
from kcomp.options import MAX_BATCH, MAX_SIDE, Choice, Flag, Float, Int, Spec, Text, lazy
from kcomp.tasks import task_names

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
    "workers": None,  # 2 on a CPU, the cores per GPU (up to 8) on a GPU: kcomp.runtime.device.resolve_workers
    "compile": False,
    "save_every": 0,
    "log_every": 50,
    # data-parallel processes per node and nodes (`--gpus`, `--nodes`): recorded, but free to differ between
    # folds; a fold's last.pt records its world size and resumes only with the same one (the global batch)
    "gpus": 1,
    "nodes": 1,
    "weights_partial": False,  # load --weights even when they fill less than MIN_WEIGHTS_SHARE of the model
}
# Where a task's sensible default differs (applied under the command line): a seg batch costs several times a
# classifier's at the same size, and short runs on small data need optimizer steps more than large batches.
TASK_DEFAULTS: dict[str, dict[str, Any]] = {"seg": {"batch_size": 8}}
RUNTIME_KEYS = frozenset({"device", "workers", "compile", "save_every", "log_every", "gpus", "nodes"})

TASKS = tuple(task_names())
CLS, INK, NOT_INK = ("cls",), ("ink",), ("cls", "seg", "det")


def _loss(name: str) -> tuple[str, Any]:
    return f"--loss {name}", lambda v: v["loss"] == name


# What each key accepts and for which tasks it means something (checked before anything is created; see
# kcomp.options). Upper bounds are where a value stops meaning anything or overflows what it feeds.
SPECS: dict[str, Spec] = {
    "task": Choice(TASKS, what="task"),
    "folds": Text(),
    "target": Text(only=CLS),
    "model": Text(),
    "img_size": Int(1, MAX_SIDE, only=NOT_INK),  # ink: --patch
    "epochs": Int(1, 100_000),
    "batch_size": Int(1, MAX_BATCH),
    "lr": Float(0, 1, low_open=True),  # AdamW moves each weight by about lr per step
    "weight_decay": Float(0),
    "warmup_epochs": Float(0),
    "min_lr_ratio": Float(0, 1),
    "accum": Int(1, MAX_BATCH),
    "loss": Choice(lazy("kcomp.models.losses", "LOSSES"), what="loss", only=CLS),
    "smoothing": Float(0, 1, high_open=True, only=("cls", "seg", "ink")),
    "t1": Float(0, 2, high_open=True, only=CLS, needs=_loss("bi_tempered")),
    "t2": Float(0, 10, low_open=True, only=CLS, needs=_loss("bi_tempered")),  # t2 >~ 50 overflows the gradient
    "taylor_n": Int(1, 32, only=CLS, needs=_loss("taylor")),  # terms of the series, one pass over the batch each
    "mixup": Float(0, only=CLS),
    "cutmix": Float(0, only=CLS),
    "mix_prob": Float(0, 1, only=CLS, needs=("--mixup or --cutmix", lambda v: bool(v["mixup"] or v["cutmix"]))),
    "ema": Float(0, 1, high_open=True),
    "aug": Choice(lazy("kcomp.data.transforms", "AUG_LEVELS"), what="augmentation level", only=NOT_INK),
    "drop_rate": Float(0, 1, high_open=True, only=("cls", "ink")),
    "drop_path": Float(0, 1, high_open=True, only=("cls", "ink")),
    "weights": Text(),
    "weights_partial": Flag(needs=("--weights", lambda v: bool(v["weights"]))),
    "metric": Text(),  # checked against the task's metrics in `_check`
    "val_tta": options.TTA,
    "arch": Text(only=("seg",)),  # smp's names, checked when the model is built
    "seg_loss": Choice(lazy("kcomp.models.losses", "SEG_LOSSES"), what="seg loss", only=("seg",)),
    "layers": Text(pattern=r"\d+x\d+", what="GROUPSxLAYERS, e.g. 5x7", only=INK),
    "layer_start": Int(0, MAX_SIDE, only=INK),
    "patch": Int(32, MAX_SIDE, multiple_of=32, only=INK),  # the encoder's stride
    "stride": Int(1, MAX_SIDE, only=INK),
    "layer_shift": Int(0, MAX_SIDE, only=INK),
    "neg_fraction": Float(0, 1, only=INK),
    "infer_stride": Int(1, MAX_SIDE, only=INK),
    "seed": options.SEED,
    "deterministic": Flag(),
    "amp": Choice(("auto", "bf16", "fp16", "off"), what="precision"),
    "channels_last": Flag(),
    "sync_bn": Flag(),
    "device": options.DEVICE,
    "workers": options.WORKERS,
    "compile": Flag(),
    "save_every": Int(0),
    "log_every": Int(0),
    "gpus": options.LAUNCH["gpus"],
    "nodes": options.LAUNCH["nodes"],
}


def resolve(**overrides: Any) -> dict[str, Any]:
    unknown = sorted(set(overrides) - set(DEFAULTS))
    if unknown:
        raise BadUsage(f"unknown training option(s): {', '.join(unknown)}")
    given = {k: v for k, v in overrides.items() if v is not None}
    task = given.get("task", DEFAULTS["task"])
    if task not in TASKS:  # first: every other option is judged against the task
        raise BadUsage(f"unknown task {task!r}; choose one of: {', '.join(TASKS)}")
    cfg = {**DEFAULTS, **TASK_DEFAULTS.get(task, {}), **given}
    _check(cfg, given)
    return cfg


def _check(cfg: dict[str, Any], given: dict[str, Any]) -> None:
    """Every value in range, and every option the user gave meaningful for the task; then what ties options."""
    options.check(cfg, SPECS, given=given, context=("task", cfg["task"]))
    if cfg["lr"] * cfg["weight_decay"] >= 1:  # AdamW multiplies every weight by 1 - lr * wd each step
        raise BadUsage(f"--weight-decay {cfg['weight_decay']}: with --lr {cfg['lr']} it would zero or flip every "
                       f"weight each step (lr x weight decay must be < 1)")
    if cfg["warmup_epochs"] > cfg["epochs"]:
        raise BadUsage(f"--warmup-epochs {cfg['warmup_epochs']}: longer than --epochs {cfg['epochs']}")
    if cfg["metric"] is not None:
        from kcomp.tasks import get_task

        metrics = get_task(cfg["task"]).metrics
        if cfg["metric"] not in metrics:
            raise BadUsage(f"--metric {cfg['metric']}: unknown metric for task {cfg['task']}; choose one of: "
                           f"{', '.join(metrics)}")


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

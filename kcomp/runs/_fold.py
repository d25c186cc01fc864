"""One fold's training, in parts: what trains it (`Fold`), where it stands (`Position`), and the steps that
build, resume and checkpoint them. `kcomp.runs.train` runs the epochs.

The checkpoint layout (`last.pt`, `best.pt`) is a file format: a run directory written by an earlier kcomp must
resume, so the keys written here only ever grow (docs/artifacts.md).
"""

from __future__ import annotations

import contextlib
import math
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from kcomp import console, options
from kcomp.artifacts import paths, write_json
from kcomp.artifacts.checkpoint import load_checkpoint, save_checkpoint
from kcomp.artifacts.index import IndexTable
from kcomp.data.balance import train_sampler
from kcomp.data.datasets import SeededSampler
from kcomp.errors import BadUsage, ConfigMismatch
from kcomp.infer.predict import loader_workers
from kcomp.models.optim import build_optimizer, build_scheduler, check_precision, load_scheduler
from kcomp.runs import config as config_mod
from kcomp.runs import freeze, stopping
from kcomp.runs._data import DataChanges
from kcomp.runtime import distributed
from kcomp.runtime.device import (amp_dtype, configure_backends, resolve_device, resolve_workers, rng_state,
                                  seed_everything, set_rng_state)
from kcomp.tasks.options import TrainOptions

# The position's entries of a checkpoint's "position" dict, besides the running loss and the world size.
POSITION_KEYS = ("epoch", "batch", "step", "best", "best_epoch", "loss_count")


@dataclass
class Position:
    """Where a fold's training stands, all that resuming needs besides the weights and optimizer state: the epoch,
    batches done in it, optimizer steps, the best score and its epoch, one history row per epoch, this epoch's
    running loss (summed on the device, read back only at log points) and the global RNG states, which are
    captured with the position and put back with it (per rank under DDP)."""

    loss_sum: torch.Tensor
    epoch: int = 0
    batch: int = 0
    step: int = 0
    best: float | None = None
    best_epoch: int = -1
    loss_count: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def start(cls, device: torch.device) -> Position:
        return cls(loss_sum=torch.zeros((), device=device))

    @classmethod
    def from_checkpoint(cls, ck: dict[str, Any], device: torch.device, world: int) -> Position:
        """The position saved in `ck`; sets the global RNGs to this rank's saved states as a side effect."""
        rngs = ck.get("rng_ranks") or [ck["rng"]]
        set_rng_state(rngs[distributed.rank()] if len(rngs) == world else ck["rng"])
        saved = ck["position"]
        return cls(loss_sum=saved["loss_sum"].to(device), history=ck["history"],
                   **{k: saved[k] for k in POSITION_KEYS})

    def to_checkpoint(self, world: int) -> dict[str, Any]:
        """The checkpoint entries of the position: RNG states (now), history, and the position proper."""
        return {"rng": rng_state(), "history": self.history,
                "position": {k: getattr(self, k) for k in POSITION_KEYS}
                | {"loss_sum": self.loss_sum.detach().cpu(), "world_size": world}}

    def next_epoch(self) -> None:
        self.epoch, self.batch, self.loss_count = self.epoch + 1, 0, 0
        self.loss_sum = torch.zeros((), device=self.loss_sum.device)


@dataclass
class Fold:
    """What trains one fold, built once: options, data, the model and everything whose state a checkpoint keeps."""

    opts: TrainOptions
    task: Any
    setup: dict[str, Any]
    run: Path
    fold: int
    device: torch.device
    dtype: torch.dtype | None
    metric_name: str
    metric: Any
    train_dl: DataLoader
    val_dl: DataLoader
    sampler: SeededSampler
    val_targets: Any
    model: torch.nn.Module  # the module that is saved and evaluated
    ema: Any  # timm ModelEmaV3, or None
    optimizer: torch.optim.Optimizer  # pytorch-optimizer's SAM around it with --sam
    scheduler: Any  # timm's calls: step_update(updates), step(epoch, metric) (kcomp.models.optim)
    scaler: torch.amp.GradScaler
    ddp: torch.nn.Module  # the model wrapped for DDP (the model itself in one process), for `no_sync`
    step_model: Any  # what a training step calls: `ddp`, compiled with --compile
    loss_fn: Any
    # --sam: the batches of this accumulation group, forwarded again at the perturbed weights (kcomp.runs.train)
    group_batches: list[tuple[torch.Tensor, Any]] = field(default_factory=list)

    @property
    def world(self) -> int:
        return distributed.replica()[0]

    @property
    def last(self) -> Path:
        return paths.last_checkpoint(self.run, self.fold)

    @property
    def batches(self) -> int:
        return len(self.train_dl)

    @property
    def target_columns(self) -> int:
        """Columns of a training target row, for batch mixing: the classes, twice when a teacher's probabilities
        ride beside the labels (`kcomp.models.losses.pack_teacher`)."""
        return len(self.setup.get("classes", [])) * (2 if self.opts.distilled else 1)

    @property
    def config(self) -> dict[str, Any]:
        """The options as config.json and the checkpoints store them."""
        return self.opts.to_config()

    @property
    def eval_model(self) -> torch.nn.Module:
        """What validation runs and best.pt holds: the EMA weights when there are any."""
        return self.ema.module if self.ema is not None else self.model


def build_fold(opts: TrainOptions, table: IndexTable, task: Any, setup: dict[str, Any], run: Path, fold: int,
               changes: DataChanges | None = None) -> Fold:
    """Seeded, then data, then the model (its init draws from the shared seed), then the optimizer state holders.
    The order is part of what makes a run reproducible."""
    from kcomp.metrics import get_metric

    device = distributed.local_device(resolve_device(opts.device))
    dtype = amp_dtype(device, opts.amp)
    seed_everything(opts.seed, opts.deterministic)
    configure_backends(device, opts.deterministic)
    metric_name = opts.metric or task.default_metric
    metric = get_metric(metric_name)
    loaders = _loaders(opts, table, task, setup, fold, device, changes or DataChanges())
    parts = _training_parts(opts, task, setup, run, device, dtype, batches=len(loaders[0]),
                            train=loaders[0].dataset, resuming=paths.last_checkpoint(run, fold).exists(),
                            higher=metric.higher_is_better)
    return Fold(opts, task, setup, run, fold, device, dtype, metric_name, metric, *loaders, *parts)


def _training_parts(opts: TrainOptions, task: Any, setup: dict[str, Any], run: Path, device: torch.device,
                    dtype: torch.dtype | None, *, batches: int, train: Any, resuming: bool,
                    higher: bool) -> tuple[Any, ...]:
    """(model, ema, optimizer, scheduler, scaler, ddp, step_model, loss_fn), as `Fold` holds them. A fold that
    resumes takes its weights from last.pt, so neither the hub nor --weights is read for it."""
    from timm.utils import ModelEmaV3

    from kcomp.models.pretrained import Init

    init = Init(pretrained=bool(opts.pretrained) and not resuming, weights=None if resuming else opts.weights,
                partial=opts.weights_partial)
    model = task.build_model(opts, setup, init=init).to(device)
    if opts.sync_bn:
        model = distributed.sync_batchnorm(model, device)
    if opts.channels_last:
        model = model.to(memory_format=torch.channels_last)
    freeze.prepare(model, opts)  # --freeze-bn, --grad-checkpointing
    check_precision(opts, dtype)
    optimizer = build_optimizer(model, opts)
    scheduler = build_scheduler(optimizer, opts, math.ceil(batches / opts.accum), higher_is_better=higher)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    ema = ModelEmaV3(model, decay=opts.ema, use_warmup=True) if opts.ema else None
    distributed.seed_rank(opts.seed, opts.deterministic)  # after the shared-seed model init
    ddp = distributed.wrap_ddp(model, device)  # `model` stays the module that is saved and evaluated
    step_model = torch.compile(ddp) if opts.compile else ddp
    loss_fn = task.loss(opts, setup, **_class_weights(opts, train, setup, device))
    options.validated("train")  # everything the options build is built: a bad one has left no run dir behind
    write_run_config(run, opts, setup, None if resuming else init.source)
    return model, ema, optimizer, scheduler, scaler, ddp, step_model, loss_fn


def _class_weights(opts: TrainOptions, train: Any, setup: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """`--class-weights balanced`: the loss's class weights from the classes of the fold's training rows."""
    if not opts.class_weights:
        return {}
    from kcomp.data.balance import balanced_class_weights, class_labels

    k = len(setup["classes"])
    return {"class_weights": torch.from_numpy(balanced_class_weights(class_labels(train.targets, k), k)).to(device)}


def check_run_config(run: Path, opts: TrainOptions) -> dict[str, Any] | None:
    """config.json is shared by all folds of a run; a second fold with other options is an error, not a mix.
    Returns the saved config.json, if any."""
    from kcomp.artifacts.run_config import read_run_config

    path = paths.config(run)
    if path.exists():
        saved = read_run_config(run)
        config_mod.require_same(saved["config"], opts.to_config(), str(path))
        return saved
    return None


def write_run_config(run: Path, opts: TrainOptions, setup: dict[str, Any], source: dict[str, Any] | None) -> None:
    """Written once a fold's data and model are built, so a bad option (fold, model, weights) leaves no run dir.
    `weights_source` says where the first fold's starting weights came from (`kcomp.models.pretrained.record`;
    None: not known, the fold resumed); every later fold must start from the same file."""
    from kcomp.models.pretrained import same_weights

    saved = check_run_config(run, opts)
    if saved is None:
        if distributed.is_main():
            write_json(paths.config(run), "run-config",
                       {"config": opts.to_config(), "setup": setup, "weights_source": source})
        return
    first = saved.get("weights_source")
    if source is not None and first is not None and not same_weights(first, source):
        raise ConfigMismatch(f"this fold would start from other weights ({source.get('id')}, sha256 "
                             f"{source.get('sha256')}) than the run's first fold ({first.get('id')}, sha256 "
                             f"{first.get('sha256')}): the cached file changed? use another -o RUN",
                             path=paths.config(run))


def _loaders(opts: TrainOptions, table: IndexTable, task: Any, setup: dict[str, Any], fold: int,
             device: torch.device, changes: DataChanges) -> tuple[DataLoader, DataLoader, SeededSampler, Any]:
    """Loaders of the fold's training rows (with --drop, --relabel, --extra, --teacher applied) and of its
    validation rows (as the folds file has them), the sampler to position on resume, and the validation targets
    the metric compares with."""
    rows = changes.fold_rows(table, fold, setup)
    train_ds = task.dataset(rows.table, rows.train, opts, setup, train=True)
    val_ds = task.dataset(table, rows.val, opts, setup, train=False)
    # Under DDP every rank takes every world-th sample of the same permutation: the ranks' batches together are
    # the batch one process draws at batch_size x world (the global batch), augmentation seeds included.
    replicas, rank = distributed.replica()
    sampler = train_sampler(opts.sampler, train_ds, len(setup.get("classes", ())), seed=opts.seed,
                            num_replicas=replicas, rank=rank)  # --sampler balanced: classes drawn equally
    drop_last = sampler.per_replica >= opts.batch_size
    workers = resolve_workers(opts.workers, device, opts.gpus)
    # det labels its anchors here, in the workers, and not in the training step (`Task.train_collate`)
    train_dl = DataLoader(train_ds, batch_size=opts.batch_size, sampler=sampler, drop_last=drop_last,
                          collate_fn=task.train_collate(opts, setup), **_loader_options(workers, device))
    # Validation is inference: on a CPU the model's threads already hold every core, and validating through worker
    # processes slows the next epoch's first training step (benchmarks/RESULTS.md); on a GPU, as given.
    val_dl = DataLoader(distributed.shard_dataset(val_ds), batch_size=opts.batch_size, shuffle=False,
                        **_loader_options(loader_workers(workers, device, val_ds), device))
    return train_dl, val_dl, sampler, val_ds.targets_array()


def _loader_options(workers: int, device: torch.device) -> dict[str, Any]:
    # A private generator: DataLoader draws a base seed per epoch, which must not advance the global RNG that
    # dropout uses, or a run resumed mid-epoch would drift from an uninterrupted one.
    return {"num_workers": workers, "pin_memory": device.type == "cuda", "persistent_workers": workers > 0,
            "generator": torch.Generator().manual_seed(0)} | ({"prefetch_factor": 4} if workers else {})


def resume(f: Fold, asked: bool) -> Position:
    """The position to start from: the fold's last.pt loaded into the model, EMA, optimizer, scheduler and scaler
    (any last.pt is resumed, asked or not), else the start."""
    last = f.last
    if not last.exists():
        if asked:
            console.log(f"[yellow]fold {f.fold}: nothing to resume at {last}; starting")
        return Position.start(f.device)
    if not asked:
        console.log(f"[yellow]fold {f.fold}: {last} exists; resuming it (delete the fold dir to start over)")
    ck = load_checkpoint(last, task=f.task.name)
    config_mod.require_same(ck["config"], f.config, str(last))
    trained_by = int(ck["position"].get("world_size", 1))
    done = stopping.finished(f.opts, ck["position"]["epoch"], ck["position"]["best_epoch"])
    if trained_by != f.world and not done:
        raise BadUsage(f"fold {f.fold}: {last} was trained by {trained_by} process(es), this run has {f.world}; "
                       f"the global batch would change mid-run: resume with the same --gpus/--nodes")
    f.model.load_state_dict(ck["model"])
    load_optimizer(f.optimizer, ck["optimizer"], last)
    load_scheduler(f.scheduler, ck["scheduler"])
    load_scaler(f.scaler, ck["scaler"])
    if f.ema is not None:
        f.ema.module.load_state_dict(ck["ema"])
    return Position.from_checkpoint(ck, f.device, f.world)


def load_optimizer(optimizer: torch.optim.Optimizer, state: dict[str, Any], last: Path) -> None:
    """A last.pt whose parameter groups differ from what the same options build now (a ViT run saved before its
    `no_weight_decay()` parameters got their own group) is refused naming the file, not a torch traceback."""
    try:
        optimizer.load_state_dict(state)
    except ValueError as e:
        raise ConfigMismatch(f"{last}: its optimizer state does not fit the optimizer these options build now "
                             f"({e}); start the fold over (delete {last.parent}) or finish it with the kcomp "
                             f"version that wrote it") from None


def load_scaler(scaler: torch.amp.GradScaler, state: dict[str, Any]) -> None:
    """A fold saved without loss scaling (bf16 on an Ampere GPU, fp32 on a CPU) resumed where `--amp auto` picks fp16
    (a T4) starts the scaler afresh: a disabled scaler's state is empty, which an enabled one refuses to load."""
    if state or not scaler.is_enabled():
        scaler.load_state_dict(state)


def save_last(f: Fold, pos: Position) -> None:
    """last.pt: every rank takes part (its RNG state, the loss averaged over ranks); rank 0 writes; the others
    wait for the file to be complete before going on."""
    rngs = distributed.all_gather_object(rng_state()) if f.world > 1 else None
    distributed.mean_(pos.loss_sum)
    state = {"task": f.task.name, "config": f.config, "setup": f.setup, "fold": f.fold,
             "model": f.model.state_dict(), "ema": f.ema.module.state_dict() if f.ema is not None else None,
             "optimizer": f.optimizer.state_dict(), "scheduler": f.scheduler.state_dict(),
             "scaler": f.scaler.state_dict(), **pos.to_checkpoint(f.world)}
    _save_on_main(f.last, state | ({"rng_ranks": rngs} if rngs else {}))
    distributed.barrier()


def save_best(f: Fold, epoch: int, score: float) -> None:
    """best.pt: the evaluated weights and the score they reached, without optimizer state."""
    _save_on_main(paths.best_checkpoint(f.run, f.fold), {
        "task": f.task.name, "config": f.config, "setup": f.setup, "fold": f.fold, "epoch": epoch,
        "metric": f.metric_name, "score": score, "model": f.eval_model.state_dict()})


def _save_on_main(path: Path, state: dict[str, Any]) -> None:
    """Ranks hold the same weights; only rank 0 writes them."""
    if distributed.is_main():
        save_checkpoint(path, state)


@contextlib.contextmanager
def stop_requests() -> Iterator[dict[str, bool]]:
    """SIGINT/SIGTERM ask the loop to finish its step and save, instead of dying mid-write."""
    flag = {"stop": False}

    def handler(signum: int, frame: Any) -> None:
        flag["stop"] = True

    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for s in old:
            signal.signal(s, handler)
    except ValueError:  # not the main thread (e.g. called from a test thread): no handlers, no stop requests
        old = {}
    try:
        yield flag
    finally:
        for s, h in old.items():
            signal.signal(s, h)

"""The one training loop, for every task: AMP, EMA, mixing, accumulation, checkpoints and exact resume.

Inner-loop rule: nothing in a training step waits for the device. Losses are summed on the device and read back
only every `log_every` steps and at epoch ends; progress counts images on the host.
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from kcomp import console
from kcomp.artifacts import paths, read_index, read_json, write_json, write_table
from kcomp.artifacts.checkpoint import load_checkpoint, save_checkpoint
from kcomp.artifacts.index import IndexTable
from kcomp.data.datasets import SeededSampler
from kcomp.errors import BadInput, BadUsage, Interrupted
from kcomp.infer.predict import loader_workers, predict_loader
from kcomp.tasks import get_task
from kcomp.runs import config as config_mod
from kcomp.runtime import distributed
from kcomp.runs import tensorboard
from kcomp.runtime.device import amp_dtype, resolve_device, rng_state, seed_everything, set_rng_state, step_generator


@dataclass
class FoldResult:
    fold: int
    best_score: float
    best_epoch: int
    metric: str
    checkpoint: Path


def train(cfg: dict[str, Any], *, run: str | Path, fold: int | str = 0, resume: bool = False) -> list[FoldResult]:
    """Train one fold or all folds of `cfg['folds']` into the run directory."""
    table = read_index(cfg["folds"], "folds")
    task = get_task(cfg["task"])
    setup = task.setup(table, cfg)
    _check_run_config(Path(run), cfg)
    available = sorted(int(f) for f in table.df["fold"].unique() if f >= 0)
    if fold == "all":
        todo = available
    else:
        if int(fold) not in available:
            raise BadUsage(f"--fold {fold}: folds file {table.source} has folds {available}")
        todo = [int(fold)]
    with distributed.session(resolve_device(cfg["device"]).type):  # no-op outside torchrun
        return [_train_fold(cfg, table, task, setup, Path(run), k, resume) for k in todo]


def _check_run_config(run: Path, cfg: dict[str, Any]) -> bool:
    """config.json is shared by all folds of a run; a second fold with other options is an error, not a mix."""
    path = paths.config(run)
    if path.exists():
        saved = read_json(path, "run-config")
        config_mod.require_same(saved["config"], cfg, str(path))
        return True
    return False


def _write_run_config(run: Path, cfg: dict[str, Any], setup: dict[str, Any]) -> None:
    """Written once a fold's data and model are built, so a bad option (fold, model, weights) leaves no run dir."""
    if not _check_run_config(run, cfg) and distributed.is_main():
        write_json(paths.config(run), "run-config", {"config": cfg, "setup": setup})


def _loaders(cfg: dict[str, Any], table: IndexTable, task: Any, setup: dict[str, Any], fold: int,
             device: torch.device) -> tuple[DataLoader, DataLoader, SeededSampler, Any]:
    """Loaders of the fold's training and validation rows, the sampler to position on resume, and the
    validation targets the metric compares with."""
    df = table.df
    train_rows = df[(df["split"] == "train") & (df["fold"] >= 0) & (df["fold"] != fold)].reset_index(drop=True)
    val_rows = df[(df["split"] == "train") & (df["fold"] == fold)].reset_index(drop=True)
    if len(train_rows) == 0 or len(val_rows) == 0:
        raise BadInput(f"fold {fold} leaves {len(train_rows)} training and {len(val_rows)} validation rows",
                       path=table.source)
    train_ds = task.dataset(table, train_rows, cfg, setup, train=True)
    val_ds = task.dataset(table, val_rows, cfg, setup, train=False)
    # Under DDP every rank takes every world-th sample of the same permutation: the ranks' batches together are
    # the batch one process draws at batch_size x world (the global batch), augmentation seeds included.
    replicas, rank = distributed.replica()
    sampler = SeededSampler(len(train_ds), seed=cfg["seed"], num_replicas=replicas, rank=rank)
    workers = int(cfg["workers"])

    def loader_options(n: int) -> dict[str, Any]:
        # A private generator: DataLoader draws a base seed per epoch, which must not advance the global RNG that
        # dropout uses, or a run resumed mid-epoch would drift from an uninterrupted one.
        return {"num_workers": n, "pin_memory": device.type == "cuda", "persistent_workers": n > 0,
                "generator": torch.Generator().manual_seed(0)} | ({"prefetch_factor": 4} if n else {})

    drop_last = sampler.per_replica >= cfg["batch_size"]
    train_dl = DataLoader(train_ds, batch_size=cfg["batch_size"], sampler=sampler, drop_last=drop_last,
                          **loader_options(workers))
    # Validation is inference: on a CPU the model's threads already hold every core, and validating through worker
    # processes cost the next epoch's first training step ~0.5 s (resnet18, 128 px, 2 cores); on a GPU, as given.
    val_dl = DataLoader(distributed.shard_dataset(val_ds), batch_size=cfg["batch_size"], shuffle=False,
                        **loader_options(loader_workers(workers, device, val_ds)))
    return train_dl, val_dl, sampler, val_ds.targets_array()


def _optimizer(model: torch.nn.Module, cfg: dict[str, Any]) -> torch.optim.Optimizer:
    """AdamW without weight decay on norms and biases (the usual timm recipe)."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg["lr"], fused=False)


def warmup_cosine(total_steps: int, warmup_steps: int, min_ratio: float):  # noqa: ANN201 - a LambdaLR factor
    def factor(step: int) -> float:
        if step < warmup_steps:
            return 0.01 + 0.99 * step / max(1, warmup_steps)
        t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    return factor


@contextlib.contextmanager
def _stop_requests() -> Iterator[dict[str, bool]]:
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


def _train_fold(cfg: dict[str, Any], table: IndexTable, task: Any, setup: dict[str, Any], run: Path, fold: int,
                resume: bool) -> FoldResult:
    from timm.utils import ModelEmaV3

    from kcomp.metrics import get_metric
    from kcomp.data.mix import mix_batch

    device = distributed.local_device(resolve_device(cfg["device"]))
    world, main = distributed.replica()[0], distributed.is_main()
    dtype = amp_dtype(device, cfg["amp"])
    seed_everything(cfg["seed"], cfg["deterministic"])
    metric_name = cfg["metric"] or task.default_metric
    metric = get_metric(metric_name)
    train_dl, val_dl, sampler, val_targets = _loaders(cfg, table, task, setup, fold, device)

    model = task.build_model(cfg, setup, weights=cfg["weights"]).to(device)
    _write_run_config(run, cfg, setup)
    if cfg["sync_bn"]:
        model = distributed.sync_batchnorm(model, device)
    if cfg["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    optimizer = _optimizer(model, cfg)
    batches = len(train_dl)
    steps_per_epoch = math.ceil(batches / cfg["accum"])
    total = steps_per_epoch * cfg["epochs"]
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(total, int(cfg["warmup_epochs"] * steps_per_epoch), cfg["min_lr_ratio"]))
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    ema = ModelEmaV3(model, decay=cfg["ema"], use_warmup=True) if cfg["ema"] else None
    distributed.seed_rank(cfg["seed"], cfg["deterministic"])  # after the shared-seed model init
    ddp = distributed.wrap_ddp(model, device)  # `model` stays the module that is saved and evaluated
    step_model = torch.compile(ddp) if cfg["compile"] else ddp
    loss_fn = task.loss(cfg, setup)
    num_classes = len(setup.get("classes", []))

    state = {"epoch": 0, "batch": 0, "step": 0, "best": None, "best_epoch": -1, "history": [],
             "loss_sum": torch.zeros((), device=device), "loss_count": 0}
    last = paths.last_checkpoint(run, fold)
    if last.exists() and not resume:
        console.log(f"[yellow]fold {fold}: {last} exists; resuming it (delete the fold dir to start over)")
    if last.exists():
        ck = load_checkpoint(last, task=task.name)
        config_mod.require_same(ck["config"], cfg, str(last))
        trained_by = int(ck["position"].get("world_size", 1))
        if trained_by != world and ck["position"]["epoch"] < cfg["epochs"]:
            raise BadUsage(f"fold {fold}: {last} was trained by {trained_by} process(es), this run has {world}; "
                           f"the global batch would change mid-run: resume with the same --gpus/--nodes")
        model.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        scheduler.load_state_dict(ck["scheduler"])
        scaler.load_state_dict(ck["scaler"])
        if ema is not None:
            ema.module.load_state_dict(ck["ema"])
        rngs = ck.get("rng_ranks") or [ck["rng"]]
        set_rng_state(rngs[distributed.rank()] if len(rngs) == world else ck["rng"])
        state.update({k: ck["position"][k] for k in ("epoch", "batch", "step", "best", "best_epoch", "loss_count")})
        state["history"] = ck["history"]
        state["loss_sum"] = ck["position"]["loss_sum"].to(device)
        if state["epoch"] >= cfg["epochs"]:
            if not paths.best_checkpoint(run, fold).is_file():
                raise BadInput(f"fold {fold} finished training but its best.pt is gone; delete the fold directory "
                               f"to train it again", path=paths.fold_dir(run, fold))
            console.log(f"fold {fold}: already trained ({cfg['epochs']} epochs)")
            return _result(fold, state, metric_name, run)
    elif resume:
        console.log(f"[yellow]fold {fold}: nothing to resume at {last}; starting")

    def checkpoint_state() -> dict[str, Any]:
        return {
            "task": task.name, "config": cfg, "setup": setup, "fold": fold,
            "model": model.state_dict(), "ema": ema.module.state_dict() if ema is not None else None,
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
            "rng": rng_state(), "history": state["history"],
            "position": {k: state[k] for k in ("epoch", "batch", "step", "best", "best_epoch", "loss_count")}
            | {"loss_sum": state["loss_sum"].detach().cpu(), "world_size": world},
        }

    def save_last() -> None:
        """Every rank takes part (its RNG state, the loss averaged over ranks); rank 0 writes; the others wait
        for the file to be complete before going on."""
        rngs = distributed.all_gather_object(rng_state()) if world > 1 else None
        distributed.mean_(state["loss_sum"])
        _save_on_main(last, checkpoint_state() | ({"rng_ranks": rngs} if rngs else {}))
        distributed.barrier()

    log_file = paths.train_log(run, fold)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    bs = cfg["batch_size"]
    with _stop_requests() as stop, console.progress(batches * bs, f"fold {fold}") as bar:
        while state["epoch"] < cfg["epochs"]:
            epoch = state["epoch"]
            sampler.set_epoch(epoch, start=state["batch"] * bs)
            bar.reset(batches * bs, f"fold {fold} epoch {epoch + 1}/{cfg['epochs']}")
            bar.advance(state["batch"] * bs)
            model.train()
            t0, seen = time.perf_counter(), 0
            for x, y in train_dl:
                i = state["batch"]
                x = x.to(device, non_blocking=True)
                y = y.to(device, non_blocking=True)
                if cfg["channels_last"] and x.ndim == 4:
                    x = x.contiguous(memory_format=torch.channels_last)
                if task.supports_mix and (cfg["mixup"] or cfg["cutmix"]):
                    x, y = mix_batch(x, y, num_classes, mixup_alpha=cfg["mixup"], cutmix_alpha=cfg["cutmix"],
                                     prob=cfg["mix_prob"], generator=step_generator(cfg["seed"], epoch, i))
                skip_sync = (i + 1) % cfg["accum"] != 0 and i + 1 != batches  # DDP: all-reduce before a step only
                with distributed.no_sync(ddp, skip_sync):
                    with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                        out = step_model(x)
                    loss = loss_fn(out, y)
                    scaler.scale(loss / cfg["accum"]).backward()
                state["loss_sum"] += loss.detach()
                state["loss_count"] += 1
                state["batch"] = i + 1
                seen += x.shape[0]
                if state["batch"] % cfg["accum"] == 0 or state["batch"] == batches:
                    scaler.step(optimizer)
                    scaler.update()
                    optimizer.zero_grad(set_to_none=True)
                    scheduler.step()
                    state["step"] += 1
                    if ema is not None:
                        ema.update(model, step=state["step"])
                    boundary = True
                else:
                    boundary = False
                bar.advance(x.shape[0])
                if cfg["log_every"] and state["step"] % cfg["log_every"] == 0 and boundary:
                    bar.advance(0, info=f"loss {(state['loss_sum'] / state['loss_count']).item():.4f}")
                stopping = boundary and distributed.any_flag(stop["stop"])  # all ranks stop at the same step
                if stopping or (boundary and cfg["save_every"] and state["step"] % cfg["save_every"] == 0):
                    save_last()
                    if stopping:
                        raise Interrupted(f"fold {fold}: stopped at epoch {epoch + 1} batch {state['batch']}; "
                                          f"saved {last}, re-run the same command to resume")
            distributed.mean_(state["loss_sum"])
            train_loss = (state["loss_sum"] / max(1, state["loss_count"])).item()
            elapsed = time.perf_counter() - t0
            eval_model = ema.module if ema is not None else model
            distributed.broadcast_module(eval_model)  # every rank validates (its share) with rank 0's weights
            [preds] = predict_loader([eval_model], val_dl, task, tta=cfg["val_tta"], device=device, dtype=dtype,
                                     channels_last=cfg["channels_last"])
            preds = distributed.gather_concat(preds)  # each rank predicted its contiguous share of the rows
            score = task.score(metric_name, preds, val_targets)
            improved = metric.is_better(score, state["best"])
            row = {"epoch": epoch + 1, "step": state["step"], "lr": optimizer.param_groups[0]["lr"],
                   "train_loss": train_loss, f"val_{metric_name}": score, "best": improved,
                   "seconds": elapsed, "img_per_s": seen * world / elapsed if elapsed > 0 else 0.0}
            state["history"].append(row)
            if improved:
                state["best"], state["best_epoch"] = score, epoch + 1
                _save_on_main(paths.best_checkpoint(run, fold), {
                    "task": task.name, "config": cfg, "setup": setup, "fold": fold, "epoch": epoch + 1,
                    "metric": metric_name, "score": score, "model": eval_model.state_dict()})
            state.update({"epoch": epoch + 1, "batch": 0, "loss_count": 0})
            state["loss_sum"] = torch.zeros((), device=device)
            save_last()
            if main:
                _write_metrics(run, fold, state["history"], metric_name)
                tensorboard.log_epoch(run, fold, row)  # no-op unless the optional tensorboard package is installed
            line = (f"fold {fold} epoch {epoch + 1}/{cfg['epochs']}: train_loss {train_loss:.4f} "
                    f"val_{metric_name} {score:.4f}{' *' if improved else ''} ({row['img_per_s']:.1f} img/s)")
            if main:
                with log_file.open("a") as f:
                    f.write(line + "\n")
            console.log(line)
            if distributed.any_flag(stop["stop"]):
                raise Interrupted(f"fold {fold}: stopped after epoch {epoch + 1}; saved {last}, "
                                  f"re-run the same command to resume")
    return _result(fold, state, metric_name, run)


def _save_on_main(path: Path, state: dict[str, Any]) -> None:
    """Ranks hold the same weights; only rank 0 writes them."""
    if distributed.is_main():
        save_checkpoint(path, state)


def _result(fold: int, state: dict[str, Any], metric: str, run: Path) -> FoldResult:
    return FoldResult(fold, float(state["best"]), int(state["best_epoch"]), metric, paths.best_checkpoint(run, fold))


def _write_metrics(run: Path, fold: int, history: list[dict[str, Any]], metric: str) -> None:
    import pandas as pd

    write_table(pd.DataFrame(history), paths.metrics(run, fold), "metrics", fold=fold, metric=metric)


def fold_scores(results: list[FoldResult]) -> dict[str, Any]:
    scores = [r.best_score for r in results]
    return {"metric": results[0].metric if results else None,
            "folds": {r.fold: {"score": r.best_score, "epoch": r.best_epoch, "checkpoint": str(r.checkpoint)}
                      for r in results},
            "mean": float(np.mean(scores)) if scores else None}

"""The one training loop, for every task, in steps as timm's train.py has them: `train_fold` builds a fold
(`kcomp.runs._fold`), resumes it, then alternates `train_one_epoch` and `validate` and checkpoints after each epoch
(and every `--save-every` steps). AMP, EMA, mixing, accumulation, DDP and exact resume live here once.

Inner-loop rule: nothing in a training step waits for the device. Losses are summed on the device and read back
only every `log_every` steps and at epoch ends; progress counts images on the host.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kcomp import console
from kcomp.artifacts import paths, read_index, write_table
from kcomp.artifacts.index import IndexTable
from kcomp.errors import BadInput, BadUsage, Interrupted
from kcomp.infer.predict import predict_loader
from kcomp.models.optim import clip_gradients
from kcomp.runs import config, freeze, stopping, tensorboard
from kcomp.runs._data import DataChanges
from kcomp.runs._fold import Fold, Position, build_fold, check_run_config, resume, save_best, save_last, stop_requests
from kcomp.runtime import distributed
from kcomp.runtime.device import amp_dtype, describe, out_of_memory_as_error, resolve_device, step_generator, to_device
from kcomp.tasks import get_task
from kcomp.tasks.options import TrainOptions


@dataclass
class FoldResult:
    fold: int
    best_score: float
    best_epoch: int
    metric: str
    checkpoint: Path
    epochs: int = 0  # epochs trained
    stopped_early: bool = False  # by --patience, before --epochs


def train(opts: TrainOptions, *, run: str | Path, fold: int | str = 0, resume: bool = False) -> list[FoldResult]:
    """Train one fold or all folds (`fold="all"`) of `opts.folds` into the run directory."""
    table = read_index(opts.folds, "folds")
    opts = config.settle_pretrained(opts, table.competition)
    task = get_task(opts.task)
    setup = task.setup(table, opts)
    check_run_config(Path(run), opts)
    changes = DataChanges.read(opts)  # every file the options name, read before anything is created
    todo = _folds(table, fold)
    with distributed.session(resolve_device(opts.device).type):  # no-op outside torchrun
        device = distributed.local_device(resolve_device(opts.device))
        console.log(describe(device, amp_dtype(device, opts.amp), distributed.replica()[0], opts.device))
        with out_of_memory_as_error(device, opts.batch_size, " (and --accum to keep the batch; in a new -o RUN)"):
            return [train_fold(opts, table, task, setup, Path(run), k, resume, changes) for k in todo]


def _folds(table: IndexTable, fold: int | str) -> list[int]:
    """The folds `--fold` names: a fold number, or "all" of the folds file's."""
    available = sorted(int(f) for f in table.df["fold"].unique() if f >= 0)
    if str(fold) == "all":
        if not available:
            raise BadInput("has no fold to train (every train row has fold -1); re-split it with `kcomp split`",
                           path=table.source)
        return available
    try:
        k = int(fold)
    except ValueError:
        raise BadUsage(f"--fold {fold}: expected a fold number or 'all'") from None
    if k not in available:
        raise BadUsage(f"--fold {fold}: folds file {table.source} has folds {available}")
    return [k]


def train_fold(opts: TrainOptions, table: IndexTable, task: Any, setup: dict[str, Any], run: Path, fold: int,
               resume_asked: bool, changes: DataChanges | None = None) -> FoldResult:
    """Train one fold to `opts.epochs`, from its last.pt when there is one."""
    f = build_fold(opts, table, task, setup, run, fold, changes)
    pos = resume(f, resume_asked)
    if stopping.finished(opts, pos.epoch, pos.best_epoch):
        if not paths.best_checkpoint(run, fold).is_file():
            raise BadInput(f"fold {fold} finished training but its best.pt is gone; delete the fold directory "
                           f"to train it again", path=paths.fold_dir(run, fold))
        console.log(f"fold {fold}: already trained ({pos.epoch} epochs)")
        return _result(f, pos)
    paths.train_log(run, fold).parent.mkdir(parents=True, exist_ok=True)
    bs = opts.batch_size
    with stop_requests() as stop, console.progress(f.batches * bs, f"fold {fold}") as bar:
        while not stopping.finished(opts, pos.epoch, pos.best_epoch):
            f.sampler.set_epoch(pos.epoch, start=pos.batch * bs)
            bar.reset(f.batches * bs, f"fold {fold} epoch {pos.epoch + 1}/{opts.epochs}")
            bar.advance(pos.batch * bs)
            t0 = time.perf_counter()
            seen = train_one_epoch(f, pos, bar, stop)
            distributed.mean_(pos.loss_sum)
            train_loss = (pos.loss_sum / max(1, pos.loss_count)).item()
            elapsed = time.perf_counter() - t0
            score = validate(f)
            _end_epoch(f, pos, train_loss, score, img_per_s=seen * f.world / elapsed if elapsed > 0 else 0.0,
                       seconds=elapsed)
            if distributed.any_flag(stop["stop"]):
                raise Interrupted(f"fold {fold}: stopped after epoch {pos.epoch}; saved {f.last}, "
                                  f"re-run the same command to resume")
    return _result(f, pos)


def train_one_epoch(f: Fold, pos: Position, bar: Any, stop: dict[str, bool]) -> int:
    """The rest of epoch `pos.epoch` from batch `pos.batch`; returns the images this process saw. Saves last.pt
    every `--save-every` optimizer steps, and on a stop request (then raises Interrupted): at the next step in one
    process; under DDP, where the ranks must agree on the step (a collective), at the next log or save step."""
    opts = f.opts
    f.model.train()
    freeze.enter_epoch(f, pos.epoch)  # --freeze-bn, --freeze-epochs: what this epoch trains
    seen = 0
    agree_every = (opts.log_every or 50) if f.world > 1 else 1
    for x, y in f.train_dl:
        boundary = _train_step(f, pos, x, y)
        seen += x.shape[0]
        bar.advance(x.shape[0])
        if opts.log_every and pos.step % opts.log_every == 0 and boundary:
            bar.advance(0, info=f"loss {(pos.loss_sum / pos.loss_count).item():.4f}")
        saving = boundary and opts.save_every and pos.step % opts.save_every == 0
        stopping = boundary and (saving or pos.step % agree_every == 0) and distributed.any_flag(stop["stop"])
        if stopping or saving:
            save_last(f, pos)
            if stopping:
                raise Interrupted(f"fold {f.fold}: stopped at epoch {pos.epoch + 1} batch {pos.batch}; "
                                  f"saved {f.last}, re-run the same command to resume")
    return seen


def _train_step(f: Fold, pos: Position, x: torch.Tensor, y: torch.Tensor) -> bool:
    """Forward and backward of one batch, then an optimizer step at the end of an accumulation group (returns
    whether it stepped). Mixing draws from a generator of (seed, epoch, batch), so a resumed run mixes alike."""
    from kcomp.data.mix import mix_batch

    opts, i = f.opts, pos.batch
    x = x.to(f.device, non_blocking=True)
    y = to_device(y, f.device)  # a tensor, or det's anchor targets per level
    if opts.channels_last and x.ndim == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    if f.task.supports_mix and (opts.mixup or opts.cutmix):
        x, y = mix_batch(x, y, f.target_columns, mixup_alpha=opts.mixup, cutmix_alpha=opts.cutmix,
                         prob=opts.mix_prob, generator=step_generator(opts.seed, pos.epoch, i))
    # DDP all-reduces before a step only (with --sam, before each of its two: every rank ascends along the global
    # batch's gradient, so DDP follows one process at the global batch, as without SAM)
    skip_sync = (i + 1) % opts.accum != 0 and i + 1 != f.batches
    loss = _forward_backward(f, x, y, skip_sync)
    if opts.sam:
        f.group_batches.append((x, y))
    pos.loss_sum += loss.detach()
    pos.loss_count += 1
    pos.batch = i + 1
    if pos.batch % opts.accum and pos.batch != f.batches:
        return False
    if opts.sam:
        _sam_second_pass(f)
    if opts.clip_grad is not None:
        f.scaler.unscale_(f.optimizer)
        clip_gradients(f.model.parameters(), opts)
    if opts.sam:
        f.optimizer.second_step()  # back to w, then the base optimizer's step with the gradients at w + e(w)
    else:
        f.scaler.step(f.optimizer)
    f.scaler.update()
    f.optimizer.zero_grad(set_to_none=True)
    pos.step += 1
    f.scheduler.step_update(pos.step)
    if f.ema is not None:
        f.ema.update(f.model, step=pos.step)
    return True


def _forward_backward(f: Fold, x: torch.Tensor, y: Any, skip_sync: bool) -> torch.Tensor:
    """One batch's loss, its gradients added to the parameters' (scaled under fp16; a share of the group's)."""
    with distributed.no_sync(f.ddp, skip_sync):
        with torch.autocast(f.device.type, dtype=f.dtype or torch.float32, enabled=f.dtype is not None):
            out = f.step_model(x)
        loss = f.loss_fn(out, y)
        f.scaler.scale(loss / f.opts.accum).backward()
    return loss


def _sam_second_pass(f: Fold) -> None:
    """SAM (pytorch-optimizer's): the weights move to w + e(w) = w + rho g / ||g|| along the first pass's
    gradients, and the group's batches are forwarded and backpropagated again there, BatchNorm statistics left as
    the first pass made them."""
    from pytorch_optimizer import disable_running_stats, enable_running_stats

    f.optimizer.first_step(zero_grad=True)
    disable_running_stats(f.model)
    last = len(f.group_batches) - 1
    for j, (x, y) in enumerate(f.group_batches):
        _forward_backward(f, x, y, skip_sync=j != last)
    enable_running_stats(f.model)
    f.group_batches.clear()


def validate(f: Fold) -> float:
    """The metric of the evaluated model (EMA if any) on the fold's validation rows. Under DDP every rank
    predicts its share with rank 0's weights, rank 0 scores them all and every rank gets the score."""
    model = f.eval_model
    distributed.broadcast_module(model)
    [preds] = predict_loader([model], f.val_dl, f.task, tta=f.opts.val_tta, device=f.device, dtype=f.dtype,
                             channels_last=f.opts.channels_last)
    preds = distributed.gather_to_main(preds)  # each rank predicted its contiguous share of the rows
    score = f.task.score(f.metric_name, preds, f.val_targets) if distributed.is_main() else None
    return distributed.broadcast_object(score)


def _end_epoch(f: Fold, pos: Position, train_loss: float, score: float, *, img_per_s: float,
               seconds: float) -> None:
    """Record the epoch: history row, best.pt when the score improved, last.pt, metrics.parquet, train.log."""
    epoch = pos.epoch + 1
    improved = f.metric.is_better(score, pos.best)
    f.scheduler.step(epoch, score)  # per-epoch schedules (plateau) see the validation metric
    lr = max(g["lr"] for g in f.optimizer.param_groups)  # the top layer's under --layer-decay
    row = {"epoch": epoch, "step": pos.step, "lr": lr, "train_loss": train_loss,
           f"val_{f.metric_name}": score, "best": improved, "seconds": seconds, "img_per_s": img_per_s}
    pos.history.append(row)
    if improved:
        pos.best, pos.best_epoch = score, epoch
        save_best(f, epoch, score)
    pos.next_epoch()
    save_last(f, pos)
    line = (f"fold {f.fold} epoch {epoch}/{f.opts.epochs}: train_loss {train_loss:.4f} "
            f"val_{f.metric_name} {score:.4f}{' *' if improved else ''} ({img_per_s:.1f} img/s)")
    stopped = stopping.stopped(f.opts, pos)
    if stopped:
        line += (f"; stopping: no better val_{f.metric_name} for {f.opts.patience} epochs (best "
                 f"{pos.best:.4f} at epoch {pos.best_epoch})")
    if distributed.is_main():
        _write_metrics(f.run, f.fold, pos.history, f.metric_name, stopped_early=stopped)
        tensorboard.log_epoch(f.run, f.fold, row)  # no-op unless the optional tensorboard package is installed
        with paths.train_log(f.run, f.fold).open("a") as log:
            log.write(line + "\n")
    console.log(line)


def _result(f: Fold, pos: Position) -> FoldResult:
    return FoldResult(f.fold, float(pos.best), int(pos.best_epoch), f.metric_name,
                      paths.best_checkpoint(f.run, f.fold), pos.epoch, stopping.stopped(f.opts, pos))


def _write_metrics(run: Path, fold: int, history: list[dict[str, Any]], metric: str, stopped_early: bool) -> None:
    """metrics.parquet: the history, with `stopped_early` in its metadata (True once --patience ended the fold)."""
    import pandas as pd

    write_table(pd.DataFrame(history), paths.metrics(run, fold), "metrics", fold=fold, metric=metric,
                stopped_early=stopped_early)


def fold_scores(results: list[FoldResult]) -> dict[str, Any]:
    scores = [r.best_score for r in results]
    return {"metric": results[0].metric if results else None,
            "folds": {r.fold: {"score": r.best_score, "epoch": r.best_epoch, "checkpoint": str(r.checkpoint),
                               "epochs": r.epochs, "stopped_early": r.stopped_early} for r in results},
            "mean": float(np.mean(scores)) if scores else None}

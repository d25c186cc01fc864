"""`oof` and `tta`: predictions from trained run directories, written once for every task."""

from __future__ import annotations

import functools
import itertools
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from kcomp import options
from kcomp.artifacts import paths, read_index
from kcomp.artifacts.checkpoint import model_state
from kcomp.artifacts.index import IndexTable
from kcomp.artifacts.run_config import read_run_config
from kcomp.errors import BadInput
from kcomp.models._factory import build_with_weights
from kcomp.runtime import distributed
from kcomp.runtime.device import (amp_dtype, configure_backends, describe, out_of_memory_as_error, resolve_device,
                                  resolve_workers)
from kcomp.tasks import Task, get_task
from kcomp.tasks.options import TrainOptions


@dataclass
class Run:
    path: Path
    opts: TrainOptions  # what the run was trained with
    setup: dict[str, Any]
    folds: list[int]

    @functools.cached_property
    def table(self) -> IndexTable:
        """The run's folds file, read on first use: test rows of another index never need it (a packed run
        travels without it)."""
        return read_index(self.opts.folds, "folds")


def open_run(run: str | Path) -> Run:
    run = Path(run)
    saved = read_run_config(run)
    folds = paths.trained_folds(run)
    if not folds:
        raise BadInput("has no trained fold (no fold*/best.pt)", path=run)
    return Run(run, TrainOptions.from_config(saved["config"]), saved["setup"], folds)


def _check_same(runs: list[Run]) -> None:
    first = runs[0]
    for r in runs[1:]:
        if r.opts.task != first.opts.task or r.setup != first.setup:
            raise BadInput(f"predicts {r.opts.task} {r.setup} unlike {first.path}", path=r.path)


CHECKPOINTS = ("best", "last", "best+last")
RESIZABLE = ("cls", "seg", "det")  # tasks predicting whole resized images (ink: sliding windows at the patch size)
SCALE = options.Float(0.25, 4)  # an element of --tta-scales


@dataclass(frozen=True)
class PredictOptions:
    """How to predict, shared by `oof` and `tta` (each field with its Spec, as `TrainOptions`); `out_size` (seg
    maps, parsed from HxW by the commands) and `tta_scales` (comma-separated input scales, multi-scale TTA, e.g.
    "0.9,1,1.1") go to the task's `predict_rows`; `img_size` is the input size to predict at instead of
    training's."""

    tta: int = options.option(options.TTA, 1)
    device: str = options.option(options.DEVICE, "auto")
    batch_size: int | None = options.option(options.BATCH)  # default: the run's training batch size
    workers: int | None = options.option(options.WORKERS)  # None: kcomp.runtime.device.resolve_workers
    checkpoints: str = options.option(options.Choice(CHECKPOINTS, what="checkpoint choice"), "best")
    out_size: tuple[int, int] | None = None
    tta_scales: str | None = options.option(options.Text(only=RESIZABLE))
    img_size: int | None = options.option(options.Int(1, options.MAX_SIDE, only=RESIZABLE))

    def __post_init__(self) -> None:
        options.check_fields(self)
        _ = self.scales  # parsed and checked now, before anything is created

    @functools.cached_property
    def scales(self) -> tuple[float, ...]:
        return tuple(options.parse_list("tta_scales", self.tta_scales, SCALE)) if self.tta_scales else (1.0,)

    def check_task(self, task: str) -> None:
        """The options that apply to some tasks only, against the runs' task."""
        options.check_fields(self, context=("task", task))


def _weights(run: Run, fold: int, which: str, task: str) -> dict[str, Any]:
    """The evaluated weights of a fold: best.pt holds them as saved; in last.pt the EMA (if any) is what
    validation used, so it is preferred over the raw weights there too."""
    return model_state(_checkpoint(run, fold, which), task=task, prefer_ema=which == "last")


def _checkpoint(run: Run, fold: int, which: str) -> Path:
    if which == "best":
        return paths.best_checkpoint(run.path, fold)
    last = paths.last_checkpoint(run.path, fold)
    if not last.is_file():
        raise BadInput(f"--checkpoints {which}: fold {fold} has no last.pt", path=paths.fold_dir(run.path, fold))
    return last


class ModelFeed:
    """The models a task predicts with, each built only when the task asks for it (no reference is kept here), and
    the task's predictions passing back. It holds tasks to `one_model_at_a_time`: such a task asking for a model
    before the previous one's predictions came back would hold two models' maps at once, so that is an error."""

    def __init__(self, task: Task, count: int, build: Callable[[int], torch.nn.Module]) -> None:
        self.task, self.count, self.build, self.received = task, count, build, 0

    def models(self) -> Iterator[torch.nn.Module]:
        for i in range(self.count):
            if self.task.one_model_at_a_time and self.received < i:
                raise RuntimeError(f"task {self.task.name} asked for model {i + 1} before yielding model {i}'s "
                                   f"predictions, against its one_model_at_a_time contract")
            yield self.build(i)

    def predictions(self, preds: Iterable[Any]) -> Iterator[Any]:
        for p in preds:
            self.received += 1
            yield p


def _predict(run: Run, folds: list[int], rows: Any, opts: PredictOptions, *, with_targets: bool,
             table: IndexTable | None = None) -> Iterator[Any]:
    """Each fold's predictions, in order; with `best+last` its two checkpoints' predictions are averaged (Clouds'
    trick). The folds' models go to the task together (`Task.one_model_at_a_time` says how it takes them). Under
    torchrun each rank predicts a contiguous share of the rows and every rank gets them all back in order."""
    task = get_task(run.opts.task)
    dev = distributed.local_device(resolve_device(opts.device))
    configure_backends(dev, run.opts.deterministic)
    # the options the rows are read with: at --img-size instead of training's, if given (the model is built as
    # trained)
    data = replace(run.opts, img_size=opts.img_size) if opts.img_size else run.opts
    lo, hi = distributed.shard_range(len(rows))
    share = rows if (lo, hi) == (0, len(rows)) else rows.iloc[lo:hi].reset_index(drop=True)
    checkpoints = opts.checkpoints.split("+")
    pairs = [(fold, which) for fold in folds for which in checkpoints]
    feed = ModelFeed(task, len(pairs), lambda i: build_with_weights(
        lambda: task.build_model(run.opts, run.setup), _weights(run, *pairs[i], task.name), _checkpoint(run, *pairs[i])
    ).to(dev).to(memory_format=torch.channels_last))
    predicted = None
    batch_size = opts.batch_size or run.opts.batch_size
    if len(share) or not len(rows):  # a rank may get no rows
        predicted = feed.predictions(task.predict_rows(
            feed.models(), table or run.table, share, data, run.setup, tta=opts.tta, device=dev,
            dtype=amp_dtype(dev, run.opts.amp), batch_size=batch_size,
            workers=resolve_workers(opts.workers, dev, distributed.world_size()), with_targets=with_targets,
            out_size=opts.out_size, scales=opts.scales,
            labels=[f"{run.path.name} fold {fold} {which}" for fold, which in pairs]))
    for _ in folds:
        mine = None
        if predicted is not None:
            with out_of_memory_as_error(dev, batch_size, " (or --tta)"):
                chunk = list(itertools.islice(predicted, len(checkpoints)))
            mine = chunk[0] if len(chunk) == 1 else task.average(chunk)
        yield distributed.gather_concat(mine)


def predict_oof(run_dirs: list[str | Path], opts: PredictOptions | None = None) -> tuple[Any, dict[str, Any]]:
    """Each fold predicts its own held-out rows; several runs are averaged. Returns (frame, metadata)."""
    opts = opts or PredictOptions()
    with distributed.session(resolve_device(opts.device).type):  # no-op outside torchrun
        _announce(opts, run_dirs)
        return _predict_oof(run_dirs, opts)


def _predict_oof(run_dirs: list[str | Path], opts: PredictOptions) -> tuple[Any, dict[str, Any]]:
    import pandas as pd

    runs = [open_run(r) for r in run_dirs]
    _check_same(runs)
    opts.check_task(runs[0].opts.task)
    task = get_task(runs[0].opts.task)
    df = runs[0].table.df
    parts = []
    for fold in runs[0].folds:
        rows = df[(df["split"] == "train") & (df["fold"] == fold)].reset_index(drop=True)
        preds = (p for r in runs if fold in r.folds for p in _predict(r, [fold], rows, opts, with_targets=True))
        frame = task.frame(rows, task.average(preds), runs[0].setup, with_targets=True)
        frame.insert(1, "fold", fold)
        parts.append(frame)
    out = pd.concat(parts, ignore_index=True)
    metric = runs[0].opts.metric or task.default_metric
    score = task.oof_score(metric, out, runs[0].table)
    missing = sorted(set(df[(df["split"] == "train") & (df["fold"] >= 0)]["fold"]) - set(runs[0].folds))
    meta = {"metric": metric, "score": score, "folds": runs[0].folds, "untrained_folds": missing,
            "index": runs[0].table.source,
            "runs": [str(r.path) for r in runs], "competition": runs[0].table.competition, **_opts_meta(opts)}
    return out, _pred_meta(runs[0], task, "oof", meta)


def predict_test(run_dirs: list[str | Path], opts: PredictOptions | None = None, *, index: str | Path | None = None
                 ) -> tuple[Any, dict[str, Any]]:
    """Test rows of the runs' index (or of another `index`), averaged over every fold of every run."""
    opts = opts or PredictOptions()
    with distributed.session(resolve_device(opts.device).type):  # no-op outside torchrun
        _announce(opts, run_dirs)
        return _predict_test(run_dirs, opts, index)


def _announce(opts: PredictOptions, run_dirs: list[str | Path]) -> None:
    """The start-up line: device, GPU, precision (the first run's `--amp`), processes."""
    from kcomp import console

    dev = distributed.local_device(resolve_device(opts.device))
    amp = open_run(run_dirs[0]).opts.amp if run_dirs else "auto"
    console.log(describe(dev, amp_dtype(dev, amp), distributed.world_size(), opts.device))


def _predict_test(run_dirs: list[str | Path], opts: PredictOptions, index: str | Path | None
                  ) -> tuple[Any, dict[str, Any]]:
    start = time.perf_counter()
    runs = [open_run(r) for r in run_dirs]
    _check_same(runs)
    opts.check_task(runs[0].opts.task)
    task = get_task(runs[0].opts.task)
    table = read_index(index) if index is not None else runs[0].table
    rows = table.rows("test")
    if len(rows) == 0:
        raise BadInput("index has no test rows", path=table.source)
    # a generator: each run predicts when averaging asks for it, and dense tasks hold one model's predictions at a time
    preds = (p for r in runs for p in _predict(r, r.folds, rows, opts, with_targets=False, table=table))
    out = task.frame(rows, task.average(preds), runs[0].setup, with_targets=False)
    out.insert(1, "fold", -1)
    meta = {"runs": [str(r.path) for r in runs], "models": sum(len(r.folds) for r in runs), "index": table.source,
            "competition": table.competition or runs[0].table.competition, **_opts_meta(opts),
            "timing": _timing(time.perf_counter() - start, len(rows), opts.device)}
    return out, _pred_meta(runs[0], task, "test", meta)


def _timing(seconds: float, images: int, device: str) -> dict[str, Any]:
    """Wall time per test image, models' loading included, for `kcomp pack`'s estimate against a time limit."""
    dev = distributed.local_device(resolve_device(device))
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else dev.type
    return {"seconds": round(seconds, 3), "images": images, "seconds_per_image": seconds / images, "device": name,
            "processes": distributed.world_size()}


def _opts_meta(opts: PredictOptions) -> dict[str, Any]:
    return {"tta": opts.tta, "checkpoints": opts.checkpoints,
            "out_size": list(opts.out_size) if opts.out_size else None, "tta_scales": list(opts.scales),
            "img_size": opts.img_size}


def _pred_meta(run: Run, task: Any, kind: str, extra: dict[str, Any]) -> dict[str, Any]:
    return {"task": task.name, "kind": kind, "classes": run.setup.get("classes", []),
            "target": run.setup.get("target"), **extra}

"""kcomp oof RUN... -o PRED"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from kcomp.commands._common import Device, Json, Output, Workers, emit, log
from kcomp.commands._launch import (Gpus, MasterAddr, MasterPort, NodeRank, Nodes, check_launch, is_main,
                                    relaunch_if_asked)

Tta = Annotated[int, typer.Option("--tta", help="Flip views averaged: 1, 2, 4 or 8 (use the same as for test).")]
BatchSize = Annotated[int | None, typer.Option(help="Default: the run's training batch size.")]
Checkpoints = Annotated[str, typer.Option(help="best | last | best+last (predictions of both averaged).")]
OutSize = Annotated[str | None, typer.Option(help="seg: HxW of the stored probability maps, e.g. 350x525 "
                                                  "(default: the preset's submission size).")]
TtaScales = Annotated[str | None, typer.Option(help="cls/seg/det: multi-scale TTA, input scales averaged with the "
                                                    "flip views, e.g. 0.9,1,1.1 (maps resized back, boxes "
                                                    "rescaled). Default 1.")]
ImgSize = Annotated[int | None, typer.Option(help="cls/seg/det: predict at this input size instead of "
                                                  "training's.")]


def predict_options(task: str, tta: int, device: str, batch_size: int | None, workers: int | None, checkpoints: str,
                    out_size: str | None, tta_scales: str | None, img_size: int | None) -> Any:
    """The options `oof` and `tta` share, parsed once and checked against the runs' `task`."""
    from kcomp.runs.predict import PredictOptions

    opts = PredictOptions(tta=tta, device=device, batch_size=batch_size, workers=workers, checkpoints=checkpoints,
                          out_size=_size(out_size) if out_size else None, tta_scales=tta_scales, img_size=img_size)
    opts.check_task(task)
    return opts


def check_runs(runs: list[str]) -> dict[str, Any]:
    """Each run's config.json, checked before torch is imported and before a torchrun relaunch: a bad run is one
    line, printed once, in a second rather than after every rank's start-up."""
    from kcomp.artifacts.run_config import read_run_config

    return {r: read_run_config(r) for r in runs}


def _size(text: str) -> tuple[int, int]:
    from kcomp.errors import BadUsage
    from kcomp.options import MAX_SIDE

    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise BadUsage(f"--out-size {text}: expected HEIGHTxWIDTH, e.g. 350x525") from None
    if not (1 <= h <= MAX_SIDE and 1 <= w <= MAX_SIDE):
        raise BadUsage(f"--out-size {text}: sides must be in 1..{MAX_SIDE}")
    return h, w


def command(
    runs: Annotated[list[str], typer.Argument(help="Run directories from `kcomp train` (averaged).")],
    output: Output = ...,
    tta: Tta = 1,
    device: Device = "auto",
    batch_size: BatchSize = None,
    workers: Workers = None,
    checkpoints: Checkpoints = "best",
    out_size: OutSize = None,
    tta_scales: TtaScales = None,
    img_size: ImgSize = None,
    gpus: Gpus = 1,
    nodes: Nodes = 1,
    node_rank: NodeRank = 0,
    master_addr: MasterAddr = None,
    master_port: MasterPort = None,
    as_json: Json = False,
) -> None:
    """Out-of-fold predictions: each fold's best.pt predicts its own held-out rows; several runs are averaged.
    Writes PRED (predictions parquet with `target`) and prints the CV score on stderr (`--json`: stdout)."""
    from kcomp import options
    from kcomp.artifacts.outputs import check_outputs

    check_outputs({"-o": output}, inputs=runs, summary_on_stdout=as_json)  # before torch is even imported
    task = check_runs(runs)[runs[0]]["config"]["task"]
    from kcomp.artifacts.predictions import write_predictions
    from kcomp.runs.predict import predict_oof

    opts = predict_options(task, tta, device, batch_size, workers, checkpoints, out_size, tta_scales, img_size)
    check_launch(gpus, nodes, node_rank, master_addr, master_port)
    options.validated("oof")
    relaunch_if_asked(gpus, nodes, node_rank, master_addr, master_port, device)
    df, meta = predict_oof(runs, opts)  # under torchrun: rows sharded over ranks, gathered on every rank
    if not is_main():
        return
    written = write_predictions(df, output, **meta)
    log(f"oof: CV {meta['metric']} {meta['score']:.4f} over {len(df)} rows, folds {meta['folds']}"
        + (f" (untrained folds {meta['untrained_folds']})" if meta["untrained_folds"] else ""))
    emit(written, {"metric": meta["metric"], "score": meta["score"], "rows": len(df)}, as_json)


def register(app: typer.Typer) -> None:
    app.command("oof")(command)

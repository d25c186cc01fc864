"""kcomp oof RUN... -o PRED"""

from __future__ import annotations

from typing import Annotated

import typer

from kcomp.commands._common import Device, Json, Output, Workers, emit, log

Tta = Annotated[int, typer.Option("--tta", help="Flip views averaged: 1, 2, 4 or 8 (use the same as for test).")]
BatchSize = Annotated[int | None, typer.Option(help="Default: the run's training batch size.")]


def command(
    runs: Annotated[list[str], typer.Argument(help="Run directories from `kcomp train` (averaged).")],
    output: Output = ...,
    tta: Tta = 1,
    device: Device = "auto",
    batch_size: BatchSize = None,
    workers: Workers = 2,
    as_json: Json = False,
) -> None:
    """Out-of-fold predictions: each fold's best.pt predicts its own held-out rows; several runs are averaged.
    Writes PRED (predictions parquet with `target`) and prints the CV score on stderr (`--json`: stdout)."""
    from kcomp.artifacts.predictions import write_predictions
    from kcomp.infer.runs import predict_oof

    df, meta = predict_oof(runs, tta=tta, device=device, batch_size=batch_size, workers=workers)
    written = write_predictions(df, output, **meta)
    log(f"oof: CV {meta['metric']} {meta['score']:.4f} over {len(df)} rows, folds {meta['folds']}"
        + (f" (untrained folds {meta['untrained_folds']})" if meta["untrained_folds"] else ""))
    emit(written, {"metric": meta["metric"], "score": meta["score"], "rows": len(df)}, as_json)


def register(app: typer.Typer) -> None:
    app.command("oof")(command)

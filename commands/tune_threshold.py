"""kcomp tune-threshold OOF -o THRESHOLDS.json"""

from __future__ import annotations

from typing import Annotated

import typer

from kcomp.commands._common import Json, Output, emit, log


def command(
    oof: Annotated[str, typer.Argument(help="OOF predictions from `kcomp oof` / `ensemble` ('-' = stdin).")],
    output: Output = ...,
    downscale: Annotated[int | None, typer.Option(help="ink: search the threshold on maps downscaled by this "
                                                       "factor (competitors used 32). Default 32.")] = None,
    as_json: Json = False,
) -> None:
    """Choose per-class thresholds (and minimum sizes, where the task has them) that maximise the competition
    metric on OOF predictions; write THRESHOLDS.json with the score reached. For single-label classification the
    argmax needs no threshold: the file records that and the OOF score."""
    from kcomp.artifacts import write_json
    from kcomp.artifacts.predictions import read_predictions
    from kcomp.tasks import get_task

    preds = read_predictions(oof, kind="oof")
    options = {"downscale": downscale} if downscale is not None else {}
    body = get_task(preds.task).tune_thresholds(preds, **options)
    written = write_json(output, "thresholds", body)
    if body.get("note"):
        log(f"tune-threshold: {body['note']}")
    log(f"tune-threshold: {body['metric']} {body['score']:.4f} on {preds.source}")
    emit(written if written != "-" else [], {k: body[k] for k in ("method", "metric", "score")}, as_json)


def register(app: typer.Typer) -> None:
    app.command("tune-threshold")(command)

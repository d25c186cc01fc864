"""kcomp tune-threshold OOF -o THRESHOLDS.json"""

from __future__ import annotations

from typing import Annotated

import typer

from kcomp.commands._common import Json, Output, emit, log

Grid = Annotated[str | None, typer.Option(help="seg: comma-separated candidates (default: the tuner's grid).")]


def command(
    oof: Annotated[str, typer.Argument(help="OOF predictions from `kcomp oof` / `ensemble` ('-' = stdin).")],
    output: Output = ...,
    downscale: Annotated[int | None, typer.Option(help="ink: search the threshold on maps downscaled by this "
                                                       "factor (competitors used 32). Default 32.")] = None,
    thresholds: Grid = None,
    min_sizes: Annotated[str | None, typer.Option(help="seg: comma-separated minimum component sizes in pixels "
                                                       "of the stored maps.")] = None,
    tops: Annotated[str | None, typer.Option(help="seg: comma-separated 'top' thresholds: a mask is kept only if "
                                                  "its max probability reaches it (0 = off). Default 0.")] = None,
    as_json: Json = False,
) -> None:
    """Choose per-class thresholds (and minimum sizes, where the task has them) that maximise the competition
    metric on OOF predictions; write THRESHOLDS.json with the score reached. For single-label classification the
    argmax needs no threshold: the file records that and the OOF score."""
    from kcomp.artifacts import write_json
    from kcomp.artifacts.outputs import check_outputs
    from kcomp.artifacts.predictions import read_predictions
    from kcomp.errors import BadUsage
    from kcomp.tasks import get_task

    check_outputs({"-o": output}, inputs=[oof], summary_on_stdout=as_json)
    preds = read_predictions(oof, kind="oof")
    grids = {"thresholds": (thresholds, float), "min_sizes": (min_sizes, int), "tops": (tops, float)}
    options: dict = {}
    if downscale is not None:
        if preds.task != "ink":
            raise BadUsage(f"--downscale applies to ink predictions; {oof} holds {preds.task}")
        options["downscale"] = downscale
    for name, (text, kind) in grids.items():
        if text is None:
            continue
        if preds.task != "seg":
            raise BadUsage(f"--{name.replace('_', '-')} applies to seg predictions; {oof} holds {preds.task}")
        try:
            options[name] = [kind(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise BadUsage(f"--{name.replace('_', '-')} {text}: expected comma-separated numbers") from None
    body = get_task(preds.task).tune_thresholds(preds, **options)
    written = write_json(output, "thresholds", body)
    if body.get("note"):
        log(f"tune-threshold: {body['note']}")
    log(f"tune-threshold: {body['metric']} {body['score']:.4f} on {preds.source}")
    emit(written if written != "-" else [], {k: body[k] for k in ("method", "metric", "score")}, as_json)


def register(app: typer.Typer) -> None:
    app.command("tune-threshold")(command)

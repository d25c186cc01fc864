"""kcomp tune-threshold OOF -o THRESHOLDS.json"""

from __future__ import annotations

import sys
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
                                                       "of the stored maps (0 is always tried too).")] = None,
    tops: Annotated[str | None, typer.Option(help="seg: comma-separated 'top' thresholds: a mask is kept only if "
                                                  "its max probability reaches it (0 = off, always tried). "
                                                  "Default 0.")] = None,
    as_json: Json = False,
) -> None:
    """Choose per-class thresholds (and minimum sizes, where the task has them) for the competition metric on OOF
    predictions; write THRESHOLDS.json with the in-sample score reached and, for seg and ink, the held-out score:
    each fold scored at the threshold tuned on the other folds. Minimum sizes and top thresholds are chosen by that
    held-out score (the least aggressive within one standard error of the best). For single-label classification
    the argmax needs no threshold: the file records that and the OOF score."""
    from kcomp import options
    from kcomp.artifacts import write_json
    from kcomp.artifacts.outputs import check_outputs
    from kcomp.artifacts.predictions import read_predictions
    from kcomp.post.tuned import TuneOptions
    from kcomp.tasks import get_task

    check_outputs({"-o": output}, inputs=[oof], summary_on_stdout=as_json)
    opts = TuneOptions.from_cli(downscale, thresholds, min_sizes, tops)
    preds = read_predictions(oof, kind="oof")
    opts.check_task(preds.task)  # each option means something for one task only
    options.validated("tune-threshold")
    body = get_task(preds.task).tune_thresholds(preds, **options.given(opts))
    written = write_json(output, "thresholds", body)
    if body.get("note"):
        log(f"tune-threshold: {body['note']}")
    for line in body.get("warnings", []):  # even with --quiet: the choice differs from what in-sample tuning gives
        sys.stderr.write(f"tune-threshold: warning: {line}\n")
    held = body.get("heldout")
    log(f"tune-threshold: {body['metric']} {body['score']:.4f} in-sample on {preds.source}"
        + (f", {held['score']:.4f} ± {held['std']:.4f} held-out over {len(held['folds'])} folds ({body['rule']})"
           if held else ""))
    summary = {k: body.get(k) for k in ("method", "metric", "score", "heldout", "rule")}
    if held:
        summary["heldout"] = {k: held[k] for k in ("score", "std", "se")} | {"folds": len(held["folds"])}
    emit(written if written != "-" else [], summary, as_json)


def register(app: typer.Typer) -> None:
    app.command("tune-threshold")(command)

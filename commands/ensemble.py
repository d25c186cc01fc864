"""kcomp ensemble PRED... -o PRED"""

from __future__ import annotations

from typing import Annotated

import typer

from kcomp.commands._common import Json, Output, emit, log
from kcomp.commands._weights import parse_weights


def command(
    preds: Annotated[list[str], typer.Argument(help="Prediction files of the same rows (all oof or all test).")],
    output: Output = ...,
    method: Annotated[str, typer.Option(help="mean | rank | geometric | power")] = "mean",
    weights: Annotated[str | None, typer.Option(help="Comma-separated, one per file, e.g. 1,2.")] = None,
    power: Annotated[float, typer.Option(help="Exponent for --method power (sharpening).")] = 2.0,
    as_json: Json = False,
) -> None:
    """Blend prediction files of the same ids, task and classes into one (rows in the first file's order).
    OOF inputs keep their targets and the blend's CV score is printed, so blends can be compared honestly."""
    from kcomp.artifacts.predictions import aligned, check_compatible, read_predictions, write_predictions
    from kcomp.post.ensemble import combine

    files = [read_predictions(p) for p in preds]
    check_compatible(files)
    blended = combine(aligned(files), method=method, weights=parse_weights(weights, len(files)), power=power)
    first = files[0]
    df = first.df.copy()
    df["probs"] = list(blended)
    meta = first.carried_meta()
    meta.update(ensemble={"method": method, "weights": weights, "inputs": list(preds)})
    summary: dict = {"rows": len(df)}
    if first.kind == "oof" and "target" in df.columns and meta.get("metric"):
        from kcomp.tasks import get_task

        task = get_task(first.task)
        meta["score"] = task.score(meta["metric"], blended, df["target"].to_numpy())
        for f in files:
            log(f"  {f.source}: {meta['metric']} {f.meta.get('score', float('nan')):.4f}")
        log(f"ensemble ({method}): {meta['metric']} {meta['score']:.4f}")
        summary.update(metric=meta["metric"], score=meta["score"])
    emit(write_predictions(df, output, **meta), summary, as_json)


def register(app: typer.Typer) -> None:
    app.command("ensemble")(command)

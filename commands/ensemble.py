"""kcomp ensemble PRED... -o PRED"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from kcomp.commands._common import Json, Output, emit, log


def command(
    preds: Annotated[list[str], typer.Argument(help="Prediction files of the same rows (all oof or all test).")],
    output: Output = ...,
    method: Annotated[str, typer.Option(help="mean | rank | geometric | power (maps: mean | geometric | power)")
                      ] = "mean",
    weights: Annotated[str | None, typer.Option(help="Comma-separated, one per file, e.g. 1,2.")] = None,
    power: Annotated[float | None, typer.Option(help="Exponent for --method power (sharpening). Default 2.")] = None,
    as_json: Json = False,
) -> None:
    """Blend prediction files of the same ids, task and classes into one (rows in the first file's order).
    Class probabilities: OOF inputs keep their targets and the blend's CV score is printed, so blends can be
    compared honestly. Dense maps (seg, ink) are blended id by id into a new .npz (memory: one id's maps);
    their score comes from `kcomp tune-threshold` on the blended OOF."""
    from kcomp import options
    from kcomp.artifacts.outputs import check_outputs
    from kcomp.artifacts.predictions import check_compatible, read_predictions
    from kcomp.post.ensemble import EnsembleOptions, check_map_method

    check_outputs({"-o": output}, inputs=preds, summary_on_stdout=as_json)
    opts = EnsembleOptions.from_cli(weights=weights, inputs=len(preds), method=method, power=power)
    files = [read_predictions(p) for p in preds]
    check_compatible(files)
    meta = files[0].carried_meta()
    meta.update(ensemble={"method": opts.method, "weights": weights, "inputs": list(preds)})
    maps = "map_key" in files[0].df.columns
    if maps:
        check_map_method(opts.method)
    options.validated("ensemble")
    if maps:
        written, summary = _maps(files, output, meta, opts)
    else:
        written, summary = _probs(files, output, meta, opts)
    emit(written, summary, as_json)


def _probs(files: list, output: str, meta: dict, opts: Any) -> tuple[str, dict]:
    from kcomp.artifacts.predictions import aligned, write_predictions
    from kcomp.post.ensemble import combine

    blended = combine(aligned(files), method=opts.method, weights=opts.weights, power=opts.exponent)
    first = files[0]
    df = first.df.copy()
    df["probs"] = list(blended)
    summary: dict = {"rows": len(df)}
    if first.kind == "oof" and "target" in df.columns and meta.get("metric"):
        from kcomp.tasks import get_task

        meta["score"] = get_task(first.task).score(meta["metric"], blended, df["target"].to_numpy())
        for f in files:
            log(f"  {f.source}: {meta['metric']} {f.meta.get('score', float('nan')):.4f}")
        log(f"ensemble ({opts.method}): {meta['metric']} {meta['score']:.4f}")
        summary.update(metric=meta["metric"], score=meta["score"])
    return write_predictions(df, output, **meta), summary


def _maps(files: list, output: str, meta: dict, opts: Any) -> tuple[str, dict]:
    from contextlib import ExitStack

    from kcomp.artifacts.predictions import write_map_predictions
    from kcomp.post.ensemble import blend_maps

    first = files[0]
    order = first.df["id"].tolist()
    keys = [dict(zip(f.df["id"], f.df["map_key"].astype(str), strict=True)) for f in files]
    df = first.df.copy()
    df["map_key"] = df["map_key"].astype(str)
    meta.pop("score", None)  # the blend's score is tune-threshold's to report
    with ExitStack() as stack:
        sources = [stack.enter_context(f.maps()) for f in files]
        blended = blend_maps(sources, [[k[i] for i in order] for k in keys], method=opts.method,
                             weights=opts.weights, power=opts.exponent)
        written = write_map_predictions(df, output, zip(df["map_key"], blended, strict=True), **meta)
    log(f"ensemble ({opts.method}): {len(df)} map rows from {len(files)} file(s)")
    return written, {"rows": len(df)}


def register(app: typer.Typer) -> None:
    app.command("ensemble")(command)

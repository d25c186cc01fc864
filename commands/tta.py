"""kcomp tta RUN... -o PRED"""

from __future__ import annotations

from typing import Annotated

import typer

from kcomp.commands._common import Device, Json, Output, Workers, emit, log
from kcomp.commands._launch import (Gpus, MasterAddr, MasterPort, NodeRank, Nodes, check_launch, is_main,
                                    relaunch_if_asked)
from kcomp.commands.oof import (BatchSize, Checkpoints, ImgSize, OutSize, Tta, TtaScales, check_runs,
                                 predict_options)


def command(
    runs: Annotated[list[str], typer.Argument(help="Run directories (averaged over all their folds); a file "
                                                   "among them is an index whose test rows are predicted instead.")],
    output: Output = ...,
    tta: Tta = 1,
    device: Device = "auto",
    batch_size: BatchSize = None,
    workers: Workers = None,
    checkpoints: Checkpoints = "best",
    out_size: OutSize = None,
    tta_scales: TtaScales = None,
    img_size: ImgSize = None,
    preview: Annotated[str | None, typer.Option(help="seg/ink: also write overlay PNGs of a few ids to this "
                                                     "directory, to look at before submitting.")] = None,
    preview_count: Annotated[int | None, typer.Option(help="How many ids --preview draws. Default 8.")] = None,
    gpus: Gpus = 1,
    nodes: Nodes = 1,
    node_rank: NodeRank = 0,
    master_addr: MasterAddr = None,
    master_port: MasterPort = None,
    as_json: Json = False,
) -> None:
    """Test predictions: every fold of every RUN predicts the test rows of the run's index (or of an INDEX file
    given among the arguments), with --tta flip views; probabilities are averaged. Writes PRED."""
    from pathlib import Path

    from kcomp import options
    from kcomp.artifacts.outputs import check_outputs
    from kcomp.errors import BadUsage

    check_outputs({"-o": output}, {"--preview": preview}, inputs=runs, summary_on_stdout=as_json)
    indexes = [r for r in runs if Path(r).is_file()]
    if len(indexes) > 1:
        raise BadUsage(f"give at most one index file, got {', '.join(indexes)}")
    dirs = [r for r in runs if r not in indexes]
    if not dirs:
        raise BadUsage("give at least one run directory")
    if preview and output == "-":
        raise BadUsage("--preview reads the predictions back; give -o PATH, not -")
    task = check_runs(dirs)[dirs[0]]["config"]["task"]  # before torch is imported
    opts = predict_options(task, tta, device, batch_size, workers, checkpoints, out_size, tta_scales, img_size)
    from kcomp.report.preview import PreviewOptions

    shown = PreviewOptions(preview=preview, preview_count=preview_count)
    check_launch(gpus, nodes, node_rank, master_addr, master_port)
    if preview and task not in ("seg", "ink"):  # known from the run's config: a failed preview leaves nothing
        raise BadUsage(f"--preview does not apply to task {task} (only to seg, ink)")
    options.validated("tta")
    from kcomp.artifacts.predictions import read_predictions, write_predictions
    from kcomp.runs.predict import predict_test

    relaunch_if_asked(gpus, nodes, node_rank, master_addr, master_port, device)
    df, meta = predict_test(dirs, opts, index=indexes[0] if indexes else None)
    if not is_main():
        return
    written = [write_predictions(df, output, **meta)]
    log(f"tta: {len(df)} test rows from {meta['models']} model(s) x {tta * len(opts.scales)} view(s)")
    if preview:
        from kcomp.artifacts._atomic import staged_dir
        from kcomp.report.preview import write_previews

        with staged_dir(preview) as stage:
            pngs = write_previews(read_predictions(written[0]), stage, n=shown.count)
        log(f"tta: {len(pngs)} preview(s) in {preview}")
    emit(written, {"rows": len(df), "models": meta["models"]}, as_json)


def register(app: typer.Typer) -> None:
    app.command("tta")(command)

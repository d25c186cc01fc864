"""kcomp report RUN|PRED|THRESHOLDS... -o DIR"""

from __future__ import annotations

from typing import Annotated

import typer

from kcomp.commands._common import Json, emit


def command(
    inputs: Annotated[list[str], typer.Argument(help="Run directories, prediction files and/or thresholds JSON "
                                                     "files, in the order the page shows them.")],
    output: Annotated[str, typer.Option("-o", "--output", help="Directory for the PNGs and index.html.")] = ...,
    previews: Annotated[int, typer.Option(help="Overlay previews per predictions file (seg masks, ink maps, "
                                               "det boxes).")] = 4,
    worst: Annotated[int, typer.Option(help="Gallery of the OOF rows with the lowest own score, per OOF file "
                                            "(0 = none).")] = 8,
    as_json: Json = False,
) -> None:
    """Look at results without changing them: training curves (loss, metric, learning rate per epoch) of runs and,
    for two or more runs, a leaderboard (CV per fold, mean, std, time and the options in which they differ);
    class-probability histograms and the confusion matrix of OOF predictions, overlay previews of masks, ink maps
    and boxes (at a thresholds file's settings when one is among the inputs, with the truth for OOF), the worst OOF
    rows, threshold-vs-score curves; as PNGs plus DIR/index.html (one static page, opens from disk) and a summary
    table on stderr. Prints the files written."""
    from pathlib import Path

    from kcomp import options
    from kcomp.artifacts.outputs import check_outputs
    from kcomp.report.build import ReportOptions, build_report
    from kcomp.report.terminal import print_summary

    check_outputs(dirs={"-o": output}, inputs=inputs)
    opts = ReportOptions(previews=previews, worst=worst)
    options.validated("report")
    sections, written = build_report(inputs, Path(output), previews=opts.previews, worst=opts.worst)
    print_summary(sections)
    emit(written, {"report": str(Path(output) / "index.html"), "sections": [s.to_json() for s in sections]},
         as_json)


def register(app: typer.Typer) -> None:
    app.command("report")(command)

"""kcomp clean OOF -o ISSUES.parquet"""

from __future__ import annotations

from typing import Annotated

import typer

from kcomp.commands._common import Json, Output, emit, log


def command(
    oof: Annotated[str, typer.Argument(help="cls OOF predictions from `kcomp oof` / `ensemble` ('-' = stdin).")],
    output: Output = ...,
    filter_by: Annotated[str, typer.Option(help="cleanlab's rule for flagging a row: prune_by_noise_rate | "
                                                "prune_by_class | both | confident_learning | predicted_neq_given "
                                                "| low_normalized_margin | low_self_confidence.")
                         ] = "prune_by_noise_rate",
    quality: Annotated[str, typer.Option(help="Label quality score that ranks the rows: self_confidence | "
                                              "normalized_margin | confidence_weighted_entropy.")
                       ] = "self_confidence",
    as_json: Json = False,
) -> None:
    """Find likely label errors among the train rows by confident learning (cleanlab) on out-of-fold class
    probabilities. Writes ISSUES (one row per flagged row, worst first: id, fold, given and suggested label,
    label quality in [0, 1]) for `train --drop` / `--relabel`, which change only training rows, never validation
    rows. Single-label classification only."""
    from kcomp.artifacts.outputs import check_outputs
    from kcomp.post.label_issues import CleanOptions, clean

    check_outputs({"-o": output}, inputs=[oof], summary_on_stdout=as_json)
    opts = CleanOptions(filter_by=filter_by, quality=quality)
    written, summary = clean(oof, output, filter_by=opts.filter_by, quality=opts.quality)
    log(f"clean: {summary['issues']} of {summary['rows']} rows flagged ({opts.filter_by})")
    emit(written if written != "-" else [], summary, as_json)


def register(app: typer.Typer) -> None:
    app.command("clean")(command)

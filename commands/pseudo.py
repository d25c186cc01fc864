"""kcomp pseudo PRED... -o PSEUDO.parquet"""

from __future__ import annotations

from typing import Annotated

import typer

from kcomp.commands._common import Json, Output, emit, log


def command(
    preds: Annotated[list[str], typer.Argument(help="Test predictions from `kcomp tta` / `ensemble` / `wbf` (files "
                                                    "of other rows of the same index are joined).")],
    output: Output = ...,
    min_conf: Annotated[float, typer.Option(help="Keep rows whose confidence is at least this, in [0, 1].")] = 0.0,
    top_frac: Annotated[float, typer.Option(help="Keep only this most confident share of the rows, in (0, 1].")
                        ] = 1.0,
    soft: Annotated[bool, typer.Option("--soft", help="cls: also store the class probabilities as soft labels.")
                    ] = False,
    thresholds: Annotated[str | None, typer.Option(help="seg/ink: THRESHOLDS.json from `kcomp tune-threshold` "
                                                        "(default: threshold 0.5, no post-processing).")] = None,
    min_score: Annotated[float, typer.Option(help="det: boxes scoring at least this become labels, in [0, 1].")
                         ] = 0.5,
    as_json: Json = False,
) -> None:
    """Turn test predictions into training rows (pseudo-labels) with a confidence: cls the argmax class (and with
    --soft the probabilities), seg/ink the masks after the thresholds file's post-processing (seg as RLE columns,
    ink as label PNGs in PSEUDO_labels/ beside the table), det the boxes above --min-score. The rows keep their
    index's paths (relative to its data root), so `train --extra PSEUDO.parquet` adds them to every fold's training
    rows, never to validation."""
    from kcomp.artifacts.outputs import check_outputs
    from kcomp.tasks.pseudo import PseudoOptions, make_pseudo

    check_outputs({"-o": output}, inputs=[*preds, thresholds], summary_on_stdout=as_json)
    opts = PseudoOptions(min_conf=min_conf, top_frac=top_frac, soft=soft, thresholds=thresholds, min_score=min_score)
    written, summary = make_pseudo(preds, output, opts)
    log(f"pseudo: kept {summary['kept']} of {summary['rows']} rows"
        + (f" (mean confidence {summary['mean_confidence']:.3f})" if summary["kept"] else ""))
    emit(written if written != "-" else [], summary, as_json)


def register(app: typer.Typer) -> None:
    app.command("pseudo")(command)

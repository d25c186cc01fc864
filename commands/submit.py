"""kcomp submit COMP PRED... -o submission.csv"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kcomp.commands._common import Json, Output, emit, log


def command(
    competition: Annotated[str, typer.Argument(help="Competition preset (listed above).")],
    preds: Annotated[list[str], typer.Argument(help="Test prediction file(s); each file's metadata says what "
                                                     "it holds.")],
    output: Output = ...,
    thresholds: Annotated[str | None, typer.Option(help="THRESHOLDS.json from `kcomp tune-threshold`.")] = None,
    sample: Annotated[str | None, typer.Option(help="sample_submission.csv to validate ids, columns and order "
                                                    "against (default: the one in the raw data dir, if any).")] = None,
    none_power: Annotated[float | None, typer.Option(help="siim-covid19: with a has_opacity file, multiply opacity "
                                                          "scores by (1 - p_none)^K (winners: 0.3).")] = None,
    as_json: Json = False,
) -> None:
    """Turn test predictions into the competition's submission CSV: exactly its columns, in the sample's id
    order. Missing, duplicate or unknown ids are errors and nothing is written."""
    from kcomp import options
    from kcomp.artifacts.outputs import check_outputs
    from kcomp.artifacts.predictions import read_predictions
    from kcomp.artifacts.submission import align_to_sample, write_submission
    from kcomp.artifacts.thresholds import read_thresholds
    from kcomp.competitions import SubmitOptions, get_competition
    from kcomp.errors import BadInput

    check_outputs({"-o": output}, inputs=[*preds, thresholds, sample], summary_on_stdout=as_json)
    opts = SubmitOptions(thresholds=thresholds, sample=sample, none_power=none_power)
    comp = get_competition(competition)
    preset = opts.preset(comp, competition)
    files = [read_predictions(p) for p in preds]
    thr = read_thresholds(opts.thresholds) if opts.thresholds else None
    if thr is not None and thr["task"] != comp.task:
        raise BadInput(f"holds thresholds for task {thr['task']}; {competition} submits {comp.task} predictions",
                       path=opts.thresholds)
    sample_path = Path(opts.sample) if opts.sample else _find_sample(files)
    check_outputs({"-o": output}, inputs=[sample_path])  # the sample found through the runs is read too
    options.validated("submit")
    sub = comp.submit(files, thresholds=thr, **preset)
    if sample_path is not None:
        sub = align_to_sample(sub, sample_path, comp.id_column)
        log(f"submit: {len(sub)} rows checked against {sample_path}")
    else:
        log("submit: no sample_submission.csv found; rows are not checked (pass --sample)")
    emit(write_submission(sub, output), {"rows": len(sub), "sample": str(sample_path) if sample_path else None},
         as_json)


def _find_sample(files: list) -> Path | None:
    """The sample in the raw data root of the runs that made the predictions, when it can be traced."""
    from kcomp.artifacts import read_index
    from kcomp.artifacts.run_config import read_run_config

    for f in files:
        for run in f.meta.get("runs", []):
            try:
                folds = read_run_config(run)["config"]["folds"]
                candidate = read_index(folds, "folds").root / "sample_submission.csv"
            except Exception:  # noqa: BLE001 - tracing is best effort; --sample is the explicit way
                continue
            if candidate.is_file():
                return candidate
    return None


def register(app: typer.Typer) -> None:
    from kcomp.competitions import describe

    app.command("submit", help=(command.__doc__ or "") + "\n\n\b\nCompetitions:\n" + describe())(command)

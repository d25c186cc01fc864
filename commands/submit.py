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
    from kcomp.artifacts.outputs import check_outputs
    from kcomp.artifacts.predictions import read_predictions
    from kcomp.artifacts.submission import align_to_sample, write_submission
    from kcomp.artifacts.thresholds import read_thresholds
    from kcomp.competitions import get_competition
    from kcomp.errors import BadInput

    comp = get_competition(competition)
    check_outputs({"-o": output}, inputs=[*preds, thresholds, sample], summary_on_stdout=as_json)
    files = [read_predictions(p) for p in preds]
    thr = read_thresholds(thresholds) if thresholds else None
    if thr is not None and thr["task"] != comp.task:
        raise BadInput(f"holds thresholds for task {thr['task']}; {competition} submits {comp.task} predictions",
                       path=thresholds)
    options = {k: v for k, v in {"none_power": none_power}.items() if v is not None}
    _check_options(comp, competition, options)
    sample_path = Path(sample) if sample else _find_sample(files)
    check_outputs({"-o": output}, inputs=[sample_path])  # the sample found through the runs is read too
    sub = comp.submit(files, thresholds=thr, **options)
    if sample_path is not None:
        sub = align_to_sample(sub, sample_path, comp.id_column)
        log(f"submit: {len(sub)} rows checked against {sample_path}")
    else:
        log("submit: no sample_submission.csv found; rows are not checked (pass --sample)")
    emit(write_submission(sub, output), {"rows": len(sub), "sample": str(sample_path) if sample_path else None},
         as_json)


def _check_options(comp: object, name: str, options: dict) -> None:
    """Preset-specific options reach only presets whose `submit` takes them; elsewhere they are a usage error."""
    import inspect

    from kcomp.errors import BadUsage

    params = inspect.signature(comp.submit).parameters  # type: ignore[attr-defined]
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    for key in options:
        if key not in params:
            raise BadUsage(f"--{key.replace('_', '-')} does not apply to {name}")


def _find_sample(files: list) -> Path | None:
    """The sample in the raw data root of the runs that made the predictions, when it can be traced."""
    from kcomp.artifacts import read_index, read_json
    from kcomp.artifacts.paths import config

    for f in files:
        for run in f.meta.get("runs", []):
            try:
                folds = read_json(config(run), "run-config")["config"]["folds"]
                candidate = read_index(folds, "folds").root / "sample_submission.csv"
            except Exception:  # noqa: BLE001 - tracing is best effort; --sample is the explicit way
                continue
            if candidate.is_file():
                return candidate
    return None


def register(app: typer.Typer) -> None:
    from kcomp.competitions import describe

    app.command("submit", help=(command.__doc__ or "") + "\n\n\b\nCompetitions:\n" + describe())(command)

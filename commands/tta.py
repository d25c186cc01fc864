"""kcomp tta RUN... -o PRED"""

from __future__ import annotations

from typing import Annotated

import typer

from kcomp.commands._common import Device, Json, Output, Workers, emit, log
from kcomp.commands.oof import BatchSize, Tta


def command(
    runs: Annotated[list[str], typer.Argument(help="Run directories (averaged over all their folds); a file "
                                                   "among them is an index whose test rows are predicted instead.")],
    output: Output = ...,
    tta: Tta = 1,
    device: Device = "auto",
    batch_size: BatchSize = None,
    workers: Workers = 2,
    as_json: Json = False,
) -> None:
    """Test predictions: every fold of every RUN predicts the test rows of the run's index (or of an INDEX file
    given among the arguments), with --tta flip views; probabilities are averaged. Writes PRED."""
    from pathlib import Path

    from kcomp.artifacts.predictions import write_predictions
    from kcomp.errors import BadUsage
    from kcomp.infer.runs import predict_test

    indexes = [r for r in runs if Path(r).is_file()]
    if len(indexes) > 1:
        raise BadUsage(f"give at most one index file, got {', '.join(indexes)}")
    dirs = [r for r in runs if r not in indexes]
    if not dirs:
        raise BadUsage("give at least one run directory")
    df, meta = predict_test(dirs, index=indexes[0] if indexes else None, tta=tta, device=device,
                            batch_size=batch_size, workers=workers)
    written = write_predictions(df, output, **meta)
    log(f"tta: {len(df)} test rows from {meta['models']} model(s) x {tta} view(s)")
    emit(written, {"rows": len(df), "models": meta["models"]}, as_json)


def register(app: typer.Typer) -> None:
    app.command("tta")(command)

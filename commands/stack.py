"""kcomp stack OOF... --test PRED... -o PRED"""

from __future__ import annotations

from typing import Annotated

import typer

from kcomp.commands._common import Json, Output, emit, log


def command(
    oof: Annotated[list[str], typer.Argument(help="OOF prediction files, one per base model.")],
    test: Annotated[list[str], typer.Option("--test", help="Test prediction files of the same models ("
                                            "`--test A B` and `--test A --test B` both work).")],
    output: Output = ...,
    model: Annotated[str, typer.Option(help="logreg | mlp | gbm")] = "logreg",
    folds: Annotated[int, typer.Option("--folds", help="CV folds for the level-2 score.")] = 5,
    seed: Annotated[int, typer.Option()] = 42,
    oof_output: Annotated[str | None, typer.Option(help="Also write the level-2 OOF predictions here.")] = None,
    as_json: Json = False,
) -> None:
    """Fit a level-2 model on the base models' OOF class probabilities (cross-validated for an honest score,
    then refit on all OOF rows) and write its predictions for the test rows to PRED. Files are told apart by
    the kind in their metadata, and each test file is paired with the OOF file of the same runs."""
    from kcomp import options
    from kcomp.artifacts.outputs import check_outputs
    from kcomp.artifacts.predictions import (aligned, check_compatible, check_made_alike, pair_by_runs,
                                             read_predictions, write_predictions)
    from kcomp.errors import BadInput
    from kcomp.post.stack import StackOptions, stack

    check_outputs({"-o": output, "--oof-output": oof_output}, inputs=[*oof, *test], summary_on_stdout=as_json)
    opts = StackOptions(model=model, folds=folds, seed=seed, oof_output=oof_output)
    files = [read_predictions(p) for p in [*oof, *test]]
    oofs, tests = pair_by_runs([f for f in files if f.kind == "oof"], [f for f in files if f.kind == "test"])
    oof, test = [f.source for f in oofs], [f.source for f in tests]
    check_compatible(oofs)
    check_compatible(tests)
    for o, t in zip(oofs, tests, strict=True):
        check_made_alike(o, t)
    if "target" not in oofs[0].df.columns:
        raise BadInput("OOF file has no target column", path=oofs[0].source)
    options.validated("stack")
    result = stack(aligned(oofs), oofs[0].df["target"].to_numpy(), aligned(tests), model=opts.model,
                   n_splits=opts.folds, seed=opts.seed)
    base = tests[0].carried_meta()
    info = {"model": opts.model, "oof": list(oof), "test": list(test), "cv_score": result.cv_score}
    df = tests[0].df[["id", "fold"]].copy()
    df["probs"] = list(result.test.astype("float32"))
    written = [write_predictions(df, output, **{**base, "stack": info})]
    if opts.oof_output:
        odf = oofs[0].df[["id", "fold", "target"]].copy()
        odf["probs"] = list(result.oof.astype("float32"))
        obase = oofs[0].carried_meta()
        written.append(write_predictions(odf, opts.oof_output, **{**obase, "stack": info, "metric": "accuracy",
                                                            "score": result.cv_score}))
    for f, s in zip(oof, result.base_scores, strict=True):
        log(f"  {f}: accuracy {s:.4f}")
    log(f"stack ({opts.model}): CV accuracy {result.cv_score:.4f}")
    emit(written, {"cv_score": result.cv_score, "base_scores": result.base_scores}, as_json)


def register(app: typer.Typer) -> None:
    app.command("stack")(command)

"""kcomp stack OOF... --test PRED... -o PRED"""

from __future__ import annotations

from typing import Annotated

import typer

from kcomp.commands._common import Json, Output, emit, log


def command(
    oof: Annotated[list[str], typer.Argument(help="OOF prediction files, one per base model.")],
    test: Annotated[list[str], typer.Option("--test", help="Test prediction files, same models, same order.")],
    output: Output = ...,
    model: Annotated[str, typer.Option(help="logreg | mlp | gbm")] = "logreg",
    folds: Annotated[int, typer.Option("--folds", help="CV folds for the level-2 score.")] = 5,
    seed: Annotated[int, typer.Option()] = 42,
    oof_output: Annotated[str | None, typer.Option(help="Also write the level-2 OOF predictions here.")] = None,
    as_json: Json = False,
) -> None:
    """Fit a level-2 model on the base models' OOF class probabilities (cross-validated for an honest score,
    then refit on all OOF rows) and write its predictions for the test rows to PRED."""
    from kcomp.artifacts.predictions import aligned, check_compatible, read_predictions, write_predictions
    from kcomp.errors import BadInput
    from kcomp.post.stack import stack

    oofs = [read_predictions(p, kind="oof") for p in oof]
    tests = [read_predictions(p, kind="test") for p in test]
    check_compatible(oofs)
    check_compatible(tests)
    if "target" not in oofs[0].df.columns:
        raise BadInput("OOF file has no target column", path=oofs[0].source)
    result = stack(aligned(oofs), oofs[0].df["target"].to_numpy(), aligned(tests), model=model, n_splits=folds,
                   seed=seed)
    base = {k: v for k, v in tests[0].meta.items() if k not in ("kcomp_version", "schema", "command")}
    info = {"model": model, "oof": list(oof), "test": list(test), "cv_score": result.cv_score}
    df = tests[0].df[["id", "fold"]].copy()
    df["probs"] = list(result.test.astype("float32"))
    written = [write_predictions(df, output, **{**base, "stack": info})]
    if oof_output:
        odf = oofs[0].df[["id", "fold", "target"]].copy()
        odf["probs"] = list(result.oof.astype("float32"))
        obase = {k: v for k, v in oofs[0].meta.items() if k not in ("kcomp_version", "schema", "command")}
        written.append(write_predictions(odf, oof_output, **{**obase, "stack": info, "metric": "accuracy",
                                                            "score": result.cv_score}))
    for f, s in zip(oof, result.base_scores, strict=True):
        log(f"  {f}: accuracy {s:.4f}")
    log(f"stack ({model}): CV accuracy {result.cv_score:.4f}")
    emit(written, {"cv_score": result.cv_score, "base_scores": result.base_scores}, as_json)


def register(app: typer.Typer) -> None:
    app.command("stack")(command)

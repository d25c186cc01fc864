"""kcomp split INDEX -o FOLDS"""

from __future__ import annotations

from typing import Annotated

import typer

from kcomp.commands._common import Json, Output, emit, log


def command(
    index: Annotated[str, typer.Argument(help="index.parquet from `kcomp prep` ('-' = stdin).")],
    output: Output = ...,
    folds: Annotated[int, typer.Option("--folds", help="Number of folds.")] = 5,
    strategy: Annotated[str, typer.Option(help="auto | kfold | stratified | group | multilabel")] = "auto",
    seed: Annotated[int, typer.Option(help="Seed of the shuffle.")] = 42,
    label_col: Annotated[str | None, typer.Option(help="Column to stratify on (default: label / labels).")] = None,
    group_col: Annotated[str | None, typer.Option(help="Column whose values never straddle folds.")] = None,
    as_json: Json = False,
) -> None:
    """Assign every train row of INDEX to a validation fold and write FOLDS: the index plus an int `fold`
    column (-1 = never validated, e.g. test rows). Deterministic by --seed; `auto` uses group if the index has
    a `group` column, else multilabel for `labels`, else stratified for `label`, else kfold."""
    import numpy as np

    from kcomp import options
    from kcomp.artifacts import read_index, write_folds
    from kcomp.artifacts.outputs import check_outputs
    from kcomp.data.split import SplitOptions, assign_folds, resolve_strategy

    check_outputs({"-o": output}, inputs=[index], summary_on_stdout=as_json)
    opts = SplitOptions(folds=folds, strategy=strategy, seed=seed, label_col=label_col, group_col=group_col)
    table = read_index(index, "index")
    used, label, group = resolve_strategy(table.df, opts.strategy, opts.label_col, opts.group_col)
    options.validated("split")
    fold = assign_folds(table.df, n_folds=opts.folds, strategy=opts.strategy, seed=opts.seed,
                        label_col=opts.label_col, group_col=opts.group_col)
    written = write_folds(table, fold, output, strategy=used, n_folds=opts.folds, seed=opts.seed, label_col=label,
                          group_col=group)
    sizes = np.bincount(fold[fold >= 0], minlength=opts.folds).tolist()
    log(f"split: {used} into {opts.folds} folds of {sizes} rows")
    emit(written, {"strategy": used, "fold_sizes": sizes}, as_json)


def register(app: typer.Typer) -> None:
    app.command("split")(command)

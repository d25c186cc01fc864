"""kcomp prep COMP RAW_DIR -o DATA_DIR"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kcomp.commands._common import Json, Output, emit


def command(
    competition: Annotated[str, typer.Argument(help="Competition preset (listed above).")],
    raw_dir: Annotated[Path | None, typer.Argument(help="The unpacked competition download.")] = None,
    output: Output = ...,
    seed: Annotated[int, typer.Option(help="Seed for presets that generate data (demo).")] = 0,
    split_fragment: Annotated[str | None, typer.Option(
        help="vesuvius: cut these train fragments (comma-separated names, e.g. 2) into top/bottom halves "
             "holding similar papyrus, indexed as 2a/2b, so folds can be made per half.")] = None,
    as_json: Json = False,
) -> None:
    from kcomp.competitions import get_competition

    comp = get_competition(competition)
    written = comp.prep(raw_dir, Path(output), seed=seed, split_fragment=split_fragment)
    emit(written, {"competition": competition}, as_json)


def register(app: typer.Typer) -> None:
    from kcomp.competitions import describe

    app.command("prep", help=(
        "Read a competition's raw download layout and write DATA_DIR/index.parquet (train and test rows, "
        "paths relative to the data root) plus any cached arrays. Prints the paths written.\n\n"
        "\b\nCompetitions:\n" + describe()))(command)

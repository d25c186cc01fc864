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
    seed: Annotated[int | None, typer.Option(help="demo: seed of the generated data [default: 0].")] = None,
    split_fragment: Annotated[str | None, typer.Option(
        help="vesuvius: cut these train fragments (comma-separated names, e.g. 2) into top/bottom halves "
             "holding similar papyrus, indexed as 2a/2b, so folds can be made per half.")] = None,
    size: Annotated[int | None, typer.Option(
        help="siim-covid19: side of the cached square PNGs [default: 512]. cassava, clouds, demo: also decode every "
             "image once into an N x N uint8 cache that train/oof/tta read instead of the files when --img-size <= N "
             "[default: no cache].")] = None,
    bits: Annotated[int | None, typer.Option(help="siim-covid19: cached PNG depth, 8 or 16 [default: 8].")] = None,
    workers: Annotated[int | None, typer.Option(
        help="Decoding processes for the siim-covid19 PNGs and the image cache (0 = this process) "
             "[default: all CPUs].")] = None,
    skip_bad: Annotated[bool, typer.Option(
        help="siim-covid19: leave unreadable DICOM files out of the index (logged) instead of failing.")] = False,
    as_json: Json = False,
) -> None:
    from kcomp import options
    from kcomp.artifacts.outputs import check_outputs
    from kcomp.competitions import PrepOptions, get_competition

    check_outputs(dirs={"-o": output})
    opts = PrepOptions(seed=seed, split_fragment=split_fragment, size=size, bits=bits, workers=workers,
                       skip_bad=skip_bad)
    comp = get_competition(competition)
    preset = opts.preset(comp, competition)
    options.validated("prep")
    written = comp.prep(raw_dir, Path(output), **preset)
    emit(written, {"competition": competition}, as_json)


def register(app: typer.Typer) -> None:
    from kcomp.competitions import describe

    app.command("prep", help=(
        "Read a competition's raw download layout and write DATA_DIR/index.parquet (train and test rows, "
        "paths relative to the data root) plus any cached arrays. Prints the paths written.\n\n"
        "\b\nCompetitions:\n" + describe()))(command)

"""kcomp pack RUN|PRED|THRESHOLDS... --comp COMP -o PKG   |   kcomp pack --verify PKG"""

from __future__ import annotations

from functools import partial
from typing import Annotated

import typer

from kcomp.commands._common import Json, emit, log

Opt = typer.Option
# `kcomp pack --help` panels (commands/_cli.py): what the package installs from, and the notebook it runs in
Deps = partial(Opt, rich_help_panel="Dependencies")
Notebook = partial(Opt, rich_help_panel="The notebook")


def command(
    inputs: Annotated[list[str] | None, typer.Argument(
        help="The test predictions `submit` takes (their recorded chain is replayed), their runs, a thresholds "
             "file.")] = None,
    comp: Annotated[str | None, Opt("--comp", help="Competition preset (as for `kcomp submit`).")] = None,
    output: Annotated[str | None, Opt("-o", "--output", help="Package directory (new, empty, or a package).")] = None,
    verify: Annotated[str | None, Opt(help="Check package PKG against its MANIFEST.json instead.")] = None,
    base: Annotated[str | None, Deps(help="What the notebook image has (requirements-style) [default: the shipped "
                                          "Kaggle GPU image snapshot].")] = None,
    find_links: Annotated[list[str] | None, Deps(help="Also look for dependency wheels here (repeatable).")] = None,
    no_index: Annotated[bool, Deps("--no-index", help="Dependency wheels only from --find-links.")] = False,
    python_version: Annotated[str | None, Deps(help="Notebook's Python (e.g. 3.12) when not this one's: binary "
                                                    "wheels for it.")] = None,
    platform: Annotated[str | None, Deps(help="Notebook's platform tag, e.g. manylinux_2_35_x86_64.")] = None,
    half: Annotated[bool, Opt("--half", help="Store weights as fp16 (half the size; predictions move by ~1e-5)."
                              )] = False,
    input_dir: Annotated[str | None, Notebook("--input", help="Competition data in the notebook [default: "
                                                              "/kaggle/input/<competition>].")] = None,
    work: Annotated[str, Notebook(help="Intermediate files in the notebook.")] = "/kaggle/working/kcomp",
    submission: Annotated[str, Notebook(help="Where the notebook writes the CSV.")] = "/kaggle/working/submission.csv",
    sample: Annotated[str, Notebook(help="Sample submission inside the input dir ('' = none).")
                      ] = "sample_submission.csv",
    none_power: Annotated[float | None, Opt(help="siim-covid19: as for `kcomp submit`.")] = None,
    test_images: Annotated[int | None, Notebook(help="Hidden test images, for the time estimate.")] = None,
    time_limit: Annotated[str, Notebook(help="Notebook time limit: 9h, 90m, 1h30m or seconds.")] = "9h",
    as_json: Json = False,
) -> None:
    """Turn a finished local workflow into an offline inference package for a code competition's notebook: the
    wheels the image lacks (kcomp's too), each run's evaluated weights without optimizer state, predict.sh and
    predict.ipynb replaying the recorded prep/tta/ensemble/wbf/stack lines and `submit`, and MANIFEST.json (sha256
    of every file). Prints the package directory and, on stderr, the time estimate from tta's recorded timing."""
    from kcomp.errors import BadUsage
    from kcomp.pack import PackOptions, describe_estimate, pack
    from kcomp.pack import verify as check

    if verify is not None:
        if inputs or output or comp:
            raise BadUsage("--verify PKG checks a package; give no inputs, --comp or -o with it")
        summary = check(verify)
        log(f"pack: {summary['files']} files of package {summary['id']} match its manifest")
        emit(verify, summary, as_json)
        return
    if comp is None or output is None:
        raise BadUsage("give --comp COMP and -o PKG (or --verify PKG)")
    opts = PackOptions(base=base, find_links=tuple(find_links or ()), no_index=no_index,
                       python_version=python_version, platform=platform, half=half, input_dir=input_dir, work=work,
                       submission=submission, sample=sample, none_power=none_power, test_images=test_images,
                       time_limit=time_limit)
    summary = pack(inputs or [], competition=comp, output=output, opts=opts)
    for line in [*summary["warnings"], *[f"version differs: {n}" for n in summary["version_notes"]]]:
        log(f"[yellow]pack: {line}")
    log(f"pack: {len(summary['runs'])} run(s), {len(summary['wheels'])} wheel(s), {summary['bytes'] / 1e6:.1f} MB "
        f"(runs: {summary['runs_bytes'] / 1e6:.1f} MB)")
    for line in describe_estimate(summary["estimate"]):
        log(line)
    emit(output, summary, as_json)


def register(app: typer.Typer) -> None:
    app.command("pack")(command)

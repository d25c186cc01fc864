"""The `kcomp` command: registers the subcommands, the read-only `report` and `pack`; nothing heavy is imported
until one of them runs."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from kcomp import __version__
from kcomp.commands import (_cli, _common, clean, ensemble, oof, pack, prep, pseudo, report, split, stack, submit,
                            train, tta, tune_threshold, wbf)


class _Root(TyperGroup):
    """The root group, with its unset flags False instead of None.

    typer 0.29 coerces every option value that is not already a bool through a pydantic TypeAdapter, and the root's
    options are processed before a subcommand runs: its unset `--help`, `--install-completion` and `--show-completion`
    (None) cost `kcomp train --help` the pydantic import (start-up in benchmarks/RESULTS.md). Their callbacks act only
    on a true value.
    """

    def get_params(self, ctx: Any) -> list[Any]:
        params = super().get_params(ctx)
        for param in params:
            if getattr(param, "is_flag", False) and param.default is None:
                param.default = False
        return params


app = typer.Typer(
    name="kcomp",
    cls=_Root,
    help="Composable commands from a Kaggle-style vision competition's raw data to a submission CSV.\n\n"
         "raw -> prep -> index -> split -> folds -> train -> run -> oof/tta -> predictions -> "
         "wbf/ensemble/stack -> tune-threshold -> submit -> CSV. Every arrow is a file; `report` draws runs, "
         "predictions and thresholds; `clean` and `pseudo` turn OOF and test predictions back into training data.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"kcomp {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or logs on stderr.")] = False,
) -> None:
    _common.set_global(debug, quiet)


for module in (prep, split, train, oof, tune_threshold, tta, wbf, ensemble, stack, submit, clean, pseudo, report,
               pack):
    module.register(app)
_cli.install(app)  # --config and help panels for every command


def run() -> None:
    _common.run_app(app)


if __name__ == "__main__":
    run()

"""What every kcomp command shares in how it reads options and shows them: `--config FILE.yaml` (option values from
a file, under the command line) and `--help` grouped in panels.

`commands/main.py` makes `KcompCommand` the class of every subcommand, so no command module declares either. The
app renders plain click help (`rich_markup_mode=None`: `--help` must not import rich), where typer ignores
`rich_help_panel`; `format_options` draws those panels itself, so an option declared with
`rich_help_panel="Optimisation"` lands under that heading.
"""

from __future__ import annotations

from functools import cache
from typing import Annotated, Any

import typer
from typer.core import TyperCommand

CONFIG_META = "kcomp.config"  # ctx.meta key: the --config file's values (commands/_config.py)
COMMON = "Common options"  # the panel of every option declared without one
# The order panels are shown in; a panel not named here follows them, in the order its first option is declared.
ORDER = (COMMON, "Optimisation", "Augmentation", "cls", "seg", "det", "ink", "Data loop", "Devices and distributed")


class KcompCommand(TyperCommand):
    """A typer command with `--config` among its options and its options' help grouped by `rich_help_panel`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.params.append(_config_option())

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        given = list(args)  # click consumes the list
        rest = super().parse_args(ctx, args)
        if ctx.meta.get(CONFIG_META) is not None:
            from kcomp.commands._config import record

            record(ctx, given)
        return rest

    def format_options(self, ctx: Any, formatter: Any) -> None:
        for title, rows in panels(self, ctx):
            with formatter.section(title):
                formatter.write_dl(rows)


def install(app: typer.Typer) -> None:
    """Make every command registered on `app` a KcompCommand (typer's default class is TyperCommand)."""
    for info in app.registered_commands:
        if not (isinstance(info.cls, type) and issubclass(info.cls, KcompCommand)):
            info.cls = KcompCommand


def panels(command: Any, ctx: Any) -> list[tuple[str, list[tuple[str, str]]]]:
    """(heading, help rows): the arguments, then the options by panel in ORDER. A command with no panels titles
    its options "Options", as click does."""
    arguments: list[tuple[str, str]] = []
    groups: dict[str, list[tuple[str, str]]] = {COMMON: []}
    for param in command.get_params(ctx):
        row = param.get_help_record(ctx)
        if row is None:
            continue
        if param.param_type_name == "argument":
            arguments.append(row)
        else:
            groups.setdefault(getattr(param, "rich_help_panel", None) or COMMON, []).append(row)
    if len(groups) == 1:
        groups = {"Options": groups[COMMON]}
    ranked = sorted(groups.items(), key=lambda item: ORDER.index(item[0]) if item[0] in ORDER else len(ORDER))
    return [(title, rows) for title, rows in [("Arguments", arguments), *ranked] if rows]


def _apply_config(ctx: typer.Context, value: str | None) -> None:
    """Eager, so it runs before the other options are read: the file's values become click's `default_map`, which
    click consults for every option the command line leaves out."""
    if value is None or ctx.resilient_parsing:  # shell completion parses the line without acting on it
        return
    from kcomp.commands._config import default_map

    ctx.default_map = {**(ctx.default_map or {}), **default_map(ctx, value)}


def _config(config: Annotated[str | None, typer.Option(
        "--config", metavar="FILE.yaml", is_eager=True, expose_value=False, callback=_apply_config,
        help="Options from a YAML file, `name: value` as on the command line without the dashes (a list for a "
             "repeatable option); the command line wins over the file.")] = None) -> None:
    """Declares `--config` the way typer declares any option (see _config_option)."""


@cache
def _config_option() -> Any:
    """The `--config` parameter, built by typer from `_config`'s signature like every other option."""
    probe = typer.Typer()
    probe.command()(_config)
    return typer.main.get_command(probe).params[0]

"""Progress and logs go to stderr (stdout carries data); `--quiet` silences both.

rich is imported on first use, not here: every competition preset imports this module, and `kcomp --help` imports
every preset to list them, so a top-level rich import would be paid by each `--help` and completion request.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress

_state = {"quiet": False}


@functools.cache
def stderr() -> Console:
    from rich.console import Console

    return Console(stderr=True)


def set_quiet(quiet: bool) -> None:
    _state["quiet"] = quiet


def quiet() -> bool:
    return _state["quiet"]


def log(message: str) -> None:
    if not _state["quiet"]:
        stderr().print(message, highlight=False)


class _Bar:
    """A thin handle so callers can advance without knowing rich."""

    def __init__(self, progress: Progress | None, task_id: Any) -> None:
        self._p, self._t = progress, task_id

    def advance(self, n: float = 1, **fields: Any) -> None:
        if self._p is not None:
            self._p.update(self._t, advance=n, **fields)

    def describe(self, text: str) -> None:
        if self._p is not None:
            self._p.update(self._t, description=text)

    def reset(self, total: float, description: str) -> None:
        if self._p is not None:
            self._p.reset(self._t, total=total, description=description)


@contextlib.contextmanager
def progress(total: float, description: str, unit: str = "img") -> Iterator[_Bar]:
    if _state["quiet"]:
        yield _Bar(None, None)
        return
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)
    from rich.text import Text

    class Rate(ProgressColumn):
        def render(self, task: Task) -> Text:
            unit = task.fields.get("unit", "img")
            return Text(f"{task.speed:,.1f} {unit}/s" if task.speed else f"- {unit}/s", style="progress.data.speed")

    columns = [TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
               Rate(), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
               TextColumn("{task.fields[info]}")]
    with Progress(*columns, console=stderr(), transient=False, speed_estimate_period=10) as p:
        yield _Bar(p, p.add_task(description, total=total, unit=unit, info=""))

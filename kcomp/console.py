"""Progress and logs go to stderr (stdout carries data); `--quiet` silences both."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)
from rich.text import Text

console = Console(stderr=True)
_state = {"quiet": False}


def set_quiet(quiet: bool) -> None:
    _state["quiet"] = quiet


def log(message: str) -> None:
    if not _state["quiet"]:
        console.print(message, highlight=False)


class _Rate(ProgressColumn):
    def render(self, task: Task) -> Text:
        unit = task.fields.get("unit", "img")
        return Text(f"{task.speed:,.1f} {unit}/s" if task.speed else f"- {unit}/s", style="progress.data.speed")


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
    columns = [TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
               _Rate(), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
               TextColumn("{task.fields[info]}")]
    with Progress(*columns, console=console, transient=False, speed_estimate_period=10) as p:
        yield _Bar(p, p.add_task(description, total=total, unit=unit, info=""))

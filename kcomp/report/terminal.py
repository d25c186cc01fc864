"""The report in the terminal: per section a heading, its facts, a rich table and notes, on stderr (stdout stays
for the paths written)."""

from __future__ import annotations

from typing import Any

from kcomp.report.page import _fmt
from kcomp.report.section import Section

HIDDEN_FACTS = ("runs", "oof", "classes")  # long lists / paths: on the page, not in the terminal


def renderables(section: Section) -> list[Any]:
    from rich.table import Table
    from rich.text import Text

    out: list[Any] = [Text(section.title, style="bold")]
    facts = ", ".join(f"{k} {_fmt(v)}" for k, v in section.facts.items() if k not in HIDDEN_FACTS)
    if facts:
        out.append(Text(facts))
    if section.rows:
        table = Table()
        cols = list(dict.fromkeys(k for r in section.rows for k in r))
        for c in cols:
            table.add_column(str(c), justify="left" if c == "class" else "right")
        for r in section.rows:
            table.add_row(*(_fmt(r.get(c)) for c in cols))
        out.append(table)
    out.extend(Text(n, style="yellow") for n in section.notes)
    return out


def print_summary(sections: list[Section]) -> None:
    from kcomp import console

    if console.quiet():
        return
    for s in sections:
        for r in renderables(s):
            console.stderr().print(r)

"""Recorded command lines, taken apart and put back together: every artifact records the `kcomp ...` line that
wrote it (metadata `command`), and `pack` replays those lines with the paths of the notebook's machine."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field

from kcomp.errors import BadInput

# Options that take no value, in the commands pack replays and at the root; every other `--option` takes one.
FLAGS = frozenset({"--json", "--quiet", "-q", "--debug", "--skip-bad", "--no-skip-bad", "--help", "-h"})
ROOT_FLAGS = frozenset({"--quiet", "-q", "--debug"})


@dataclass(frozen=True)
class Ref:
    """A path on the machine that runs the package: `$VAR/rel` (rel '' = the directory itself). Names below a
    variable are chosen by pack ([A-Za-z0-9._-] and '/'), so they never need shell quoting."""

    var: str
    rel: str = ""

    def shell(self) -> str:
        return f'"${self.var}/{self.rel}"' if self.rel else f'"${self.var}"'


Token = str | Ref


@dataclass
class Recorded:
    """One recorded invocation: the subcommand, its positional arguments and its options in order."""

    sub: str
    positionals: list[str] = field(default_factory=list)
    options: list[tuple[str, str | None]] = field(default_factory=list)  # (name, value or None for a flag)

    def values(self, name: str, *aliases: str) -> list[str]:
        return [v for k, v in self.options if k in (name, *aliases) and v is not None]


def parse(command: str | None, where: str) -> Recorded:
    """Split `kcomp [root flags] SUB args...` (the program may be any path: tests run `python -m ...main`)."""
    if not command:
        raise BadInput("records no command line (metadata `command`); pack cannot replay it", path=where)
    try:
        words = shlex.split(command)[1:]
    except ValueError as e:
        raise BadInput(f"recorded command line is not parseable: {e}", path=where) from None
    while words and words[0] in ROOT_FLAGS:
        words.pop(0)
    if not words:
        raise BadInput(f"recorded command line names no subcommand: {command}", path=where)
    rec = Recorded(words[0])
    rest = iter(words[1:])
    for w in rest:
        if w == "--":
            rec.positionals.extend(rest)
        elif w.startswith("-") and len(w) > 1:
            name, eq, value = w.partition("=")
            if eq:
                rec.options.append((name, value))
            elif name in FLAGS:
                rec.options.append((name, None))
            else:
                rec.options.append((name, next(rest, "")))
        else:
            rec.positionals.append(w)
    return rec


def render(argv: list[Token]) -> str:
    """One shell line; Refs expand their variable, everything else is quoted as needed."""
    return " ".join(t.shell() if isinstance(t, Ref) else shlex.quote(t) for t in argv)


def options_except(rec: Recorded, drop: set[str]) -> list[Token]:
    """The recorded options as tokens, less those in `drop` (how to run, not what to compute, on this machine)."""
    out: list[Token] = []
    for name, value in rec.options:
        if name not in drop:
            out.extend([name] if value is None else [name, value])
    return out

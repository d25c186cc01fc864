"""Self-describing artifacts: every file records the kcomp version, its schema and the command that wrote it."""

from __future__ import annotations

import shlex
import sys
from typing import Any

from kcomp import __version__
from kcomp.errors import BadInput

# schema name -> newest version this kcomp writes and reads
SCHEMAS: dict[str, int] = {
    "index": 1,
    "folds": 1,
    "predictions": 1,
    "thresholds": 1,
    "checkpoint": 1,
    "metrics": 1,
    "run-config": 1,
    "package": 1,
    "label-issues": 1,
    "pseudo": 1,
}


def command_line() -> str:
    """The invocation that produced an artifact, as a shell would re-run it."""
    prog = "kcomp" if sys.argv and sys.argv[0].endswith("kcomp") else sys.argv[0] if sys.argv else "python"
    return shlex.join([prog, *sys.argv[1:]])


def make_meta(schema: str, **extra: Any) -> dict[str, Any]:
    return {
        "kcomp_version": __version__,
        "schema": {"name": schema, "version": SCHEMAS[schema]},
        "command": command_line(),
        **extra,
    }


def carried(meta: dict[str, Any], *drop: str) -> dict[str, Any]:
    """What a derived artifact inherits from its source: everything but the fields `make_meta` writes anew."""
    return {k: v for k, v in meta.items() if k not in ("kcomp_version", "schema", "command", *drop)}


def check_meta(meta: dict[str, Any] | None, accept: str | tuple[str, ...], where: str) -> dict[str, Any]:
    """Reject files of the wrong kind or from a newer kcomp with one line naming the file."""
    accept = (accept,) if isinstance(accept, str) else accept
    if not meta or "schema" not in meta:
        raise BadInput(f"not a kcomp artifact (no kcomp metadata); expected {' or '.join(accept)}", path=where)
    name, version = meta["schema"].get("name"), meta["schema"].get("version")
    if name not in accept:
        raise BadInput(f"is a kcomp {name!r} file, expected {' or '.join(accept)}", path=where)
    if not isinstance(version, int) or version > SCHEMAS[name]:
        raise BadInput(
            f"{name} schema version {version} is newer than this kcomp ({__version__}) reads "
            f"(<= {SCHEMAS[name]}); upgrade kcomp",
            path=where,
        )
    return meta

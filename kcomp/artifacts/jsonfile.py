"""JSON artifacts (run config, thresholds) with the same metadata and atomic writes as the tables."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from kcomp.artifacts._atomic import atomic_write_bytes
from kcomp.artifacts._meta import check_meta, make_meta
from kcomp.artifacts.tables import STDIO
from kcomp.errors import BadInput


def write_json(path: str | Path, schema: str, body: dict[str, Any]) -> str:
    text = json.dumps({**make_meta(schema), **body}, indent=2, sort_keys=False, default=_jsonable) + "\n"
    if str(path) == STDIO:
        sys.stdout.write(text)
        return STDIO
    atomic_write_bytes(path, text.encode())
    return str(path)


def read_json(path: str | Path, schema: str) -> dict[str, Any]:
    where = "<stdin>" if str(path) == STDIO else str(path)
    try:
        text = sys.stdin.read() if str(path) == STDIO else Path(path).read_text()
        data = json.loads(text)
    except FileNotFoundError:
        raise BadInput("no such file", path=where) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadInput(f"not valid JSON: {e}", path=where) from None
    return check_meta(data if isinstance(data, dict) else None, schema, where)


def _jsonable(obj: Any) -> Any:
    """numpy scalars and paths sneak into configs; store them as plain JSON values."""
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")

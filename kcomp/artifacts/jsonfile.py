"""JSON artifacts (run config, thresholds) with the same metadata and atomic writes as the tables."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

from kcomp.artifacts._atomic import atomic_write_bytes
from kcomp.artifacts._input import regular_file
from kcomp.artifacts._meta import check_meta, make_meta
from kcomp.artifacts.tables import STDIO
from kcomp.errors import BadInput


def write_json(path: str | Path, schema: str, body: dict[str, Any]) -> str:
    text = dumps({**make_meta(schema), **body}, indent=2) + "\n"
    if str(path) == STDIO:
        sys.stdout.write(text)
        return STDIO
    atomic_write_bytes(path, text.encode())
    return str(path)


def dumps(obj: Any, **kwargs: Any) -> str:
    """Standard JSON: NaN and infinities (an undefined score) become null, as JSON has no literal for them."""
    kwargs.setdefault("default", _jsonable)
    return json.dumps(_finite(obj), allow_nan=False, **kwargs)


def read_json(path: str | Path, schema: str) -> dict[str, Any]:
    where = "<stdin>" if str(path) == STDIO else str(path)
    try:
        text = sys.stdin.read() if str(path) == STDIO else regular_file(path, "a JSON file").read_text()
        data = json.loads(text, parse_constant=_no_constant)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadInput(f"not valid JSON: {e}", path=where) from None
    except RecursionError:
        raise BadInput("not valid JSON for kcomp: nested too deeply", path=where) from None
    except ValueError as e:  # NaN / Infinity
        raise BadInput(str(e), path=where) from None
    return check_meta(data, schema, where)


def _no_constant(name: str) -> Any:
    raise ValueError(f"holds {name}, which is not JSON (kcomp writes undefined numbers as null)")


def _finite(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if hasattr(obj, "item") and hasattr(obj, "dtype") and getattr(obj, "ndim", 1) == 0:  # numpy scalars
        return _finite(obj.item())
    return obj


def _jsonable(obj: Any) -> Any:
    """numpy arrays and paths sneak into configs; store them as plain JSON values."""
    if hasattr(obj, "tolist"):
        return _finite(obj.tolist())
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")

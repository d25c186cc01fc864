"""Parquet tables with kcomp metadata; `-` reads stdin / writes stdout so commands pipe."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kcomp.artifacts._atomic import atomic_write
from kcomp.artifacts._input import regular_file
from kcomp.artifacts._meta import check_meta, make_meta, parse_meta
from kcomp.errors import BadInput

if TYPE_CHECKING:
    import pandas as pd

META_KEY = b"kcomp"
STDIO = "-"


def write_table(df: pd.DataFrame, path: str | Path, schema: str, **meta: Any) -> str:
    """Write `df` with schema metadata atomically (or to stdout for `-`); return what was written."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(df, preserve_index=False)
    full = make_meta(schema, **meta)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), META_KEY: json.dumps(full).encode()})
    if str(path) == STDIO:
        buf = io.BytesIO()
        pq.write_table(table, buf)
        sys.stdout.buffer.write(buf.getvalue())
        sys.stdout.buffer.flush()
        return STDIO
    with atomic_write(path) as f:
        pq.write_table(table, f)
    return str(path)


def read_table(path: str | Path, accept: str | tuple[str, ...]) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Read a kcomp parquet table, checking it is of an accepted schema; returns (frame, metadata)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    where = "<stdin>" if str(path) == STDIO else str(path)
    if str(path) == STDIO:
        source: Any = pa.BufferReader(sys.stdin.buffer.read())
    else:
        source = str(regular_file(path, "a parquet table"))
    try:
        table = pq.read_table(source)
    except (pa.ArrowInvalid, OSError) as e:
        raise BadInput(f"not a readable parquet file (truncated or corrupt?): {_first_line(e)}", path=where) from e
    meta = check_meta(parse_meta((table.schema.metadata or {}).get(META_KEY), where), accept, where)
    try:
        return table.to_pandas(), meta
    except (pa.ArrowException, ValueError, TypeError) as e:  # e.g. a column of a type pandas cannot hold
        raise BadInput(f"has columns pandas cannot read: {_first_line(e)}", path=where) from e


def require_columns(df: pd.DataFrame, columns: list[str] | tuple[str, ...], where: str | Path) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise BadInput(f"missing column(s) {', '.join(missing)}", path=where)


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]

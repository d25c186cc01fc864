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


def write_table(df: pd.DataFrame, path: str | Path, schema: str, *, arrays: dict[str, Any] | None = None,
                **meta: Any) -> str:
    """Write `df` with schema metadata atomically (or to stdout for `-`); return what was written. `arrays` are
    pyarrow columns appended as they are (det boxes, built from flat arrays without a Python object per box)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(df, preserve_index=False)
    for name, column in (arrays or {}).items():
        table = table.append_column(name, column)
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
    table, meta = read_arrow(path, accept)
    return to_pandas(table, "<stdin>" if str(path) == STDIO else str(path)), meta


def read_arrow(path: str | Path, accept: str | tuple[str, ...]) -> tuple[Any, dict[str, Any]]:
    """`read_table` before pandas: (pyarrow Table, metadata), for columns pandas would turn into Python objects."""
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
    return table, meta


def to_pandas(table: Any, where: str | Path) -> pd.DataFrame:
    """An arrow table as pandas; a column pandas cannot hold is the file's fault, said in one line."""
    import pyarrow as pa

    try:
        return table.to_pandas()
    except (pa.ArrowException, ValueError, TypeError) as e:
        raise BadInput(f"has columns pandas cannot read: {_first_line(e)}", path=where) from e


def require_columns(df: pd.DataFrame, columns: list[str] | tuple[str, ...], where: str | Path) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise BadInput(f"missing column(s) {', '.join(missing)}", path=where)


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]

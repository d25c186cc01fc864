"""Submission CSVs: exactly the competition's columns and id order, checked against sample_submission.csv."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

from kcomp.artifacts._atomic import atomic_write_bytes
from kcomp.artifacts._input import regular_file
from kcomp.artifacts.tables import STDIO
from kcomp.errors import BadInput

if TYPE_CHECKING:
    import pandas as pd


def read_csv(path: str | Path, columns: list[str] | tuple[str, ...]) -> pd.DataFrame:
    """Read a competition CSV as strings (ids like '0001' must stay as written) and require its columns."""
    import pandas as pd

    p = regular_file(path, "a CSV file")
    try:
        df = pd.read_csv(p, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise BadInput(f"not a readable CSV: {first}", path=p) from None
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise BadInput(f"missing column(s) {', '.join(missing)} (has {', '.join(df.columns)})", path=p)
    return df


def align_to_sample(sub: pd.DataFrame, sample_path: str | Path, id_col: str) -> pd.DataFrame:
    """Reorder rows as the sample; missing, duplicate or unknown ids are errors, nothing is written."""
    sample = read_csv(sample_path, [id_col])
    if list(sub.columns) != list(sample.columns):
        raise BadInput(f"sample has columns {list(sample.columns)}, submission has {list(sub.columns)}",
                       path=sample_path)
    dup = sub[id_col][sub[id_col].duplicated()]
    if len(dup):
        raise BadInput(f"predictions have duplicate id {dup.iloc[0]!r}", path=sample_path)
    ids, have = list(sample[id_col]), set(sub[id_col])
    missing = [i for i in ids if i not in have]
    if missing:
        raise BadInput(f"{len(missing)} id(s) of the sample have no prediction, e.g. {missing[0]!r}", path=sample_path)
    unknown = sorted(have - set(ids))
    if unknown:
        raise BadInput(f"{len(unknown)} predicted id(s) are not in the sample, e.g. {unknown[0]!r}", path=sample_path)
    return sub.set_index(id_col).loc[ids].reset_index()[list(sample.columns)]


def write_submission(sub: pd.DataFrame, path: str | Path) -> str:
    data = sub.to_csv(index=False).encode()
    if str(path) == STDIO:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return STDIO
    atomic_write_bytes(path, data)
    return str(path)

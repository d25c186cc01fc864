"""Label issues (`kcomp clean`): train rows whose given label the OOF probabilities call likely wrong.

One row per flagged train row, worst first: `id`, `fold` (the OOF fold that predicted it), `given` and `suggested`
(class indices into the metadata's `classes`), `given_class`, `suggested_class` (their names) and `quality`
(cleanlab's label quality score in [0, 1], low = likely wrong). `train --drop` leaves these rows out of a fold's
training rows and `--relabel` trains them on `suggested`; validation rows are never changed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kcomp.artifacts.tables import STDIO, read_table, require_columns, write_table
from kcomp.errors import BadInput

if TYPE_CHECKING:
    import pandas as pd

SCHEMA = "label-issues"
COLUMNS = ("id", "fold", "given", "suggested", "given_class", "suggested_class", "quality")


@dataclass
class LabelIssues:
    df: pd.DataFrame
    meta: dict[str, Any]
    source: str

    @property
    def classes(self) -> list[str]:
        return list(self.meta.get("classes", []))

    @property
    def target(self) -> str:
        """The index column the labels came from (`label` unless the run trained on `--target`)."""
        return self.meta.get("target") or "label"


def write_label_issues(df: pd.DataFrame, path: str | Path, **meta: Any) -> str:
    check_label_issues(df, str(path), list(meta.get("classes", [])))
    return write_table(df[list(COLUMNS)], path, SCHEMA, **meta)


def read_label_issues(path: str | Path) -> LabelIssues:
    df, meta = read_table(path, SCHEMA)
    where = "<stdin>" if str(path) == STDIO else str(path)
    check_label_issues(df, where, list(meta.get("classes", [])))
    return LabelIssues(df, meta, where)


def check_label_issues(df: pd.DataFrame, where: str, classes: list[str]) -> None:
    """Columns present, ids unique, class indices inside the classes, quality in [0, 1]."""
    require_columns(df, COLUMNS, where)
    dup = df["id"][df["id"].duplicated()]
    if len(dup):
        raise BadInput(f"duplicate id {dup.iloc[0]!r}", path=where)
    for col in ("given", "suggested"):
        values = df[col].to_numpy()
        bad = (values < 0) | (values >= len(classes))
        if bad.any():
            raise BadInput(f"column {col} has value {values[bad][0]} outside 0..{len(classes) - 1} (the classes "
                           "in its metadata)", path=where)
    q = df["quality"].to_numpy(np.float64)
    if len(q) and not ((q >= 0) & (q <= 1)).all():
        raise BadInput(f"column quality has value {q[~((q >= 0) & (q <= 1))][0]} outside [0, 1]", path=where)

"""Pseudo-labelled rows (`kcomp pseudo`): test rows of an index turned into training rows, index-like.

Each row keeps its index row's columns (`id`, `path`, `height`, `width`, the image cache row, ...) with `split` =
train, the task's label columns set from the predictions (cls `label` or the run's `--target` column; seg
`mask_<class>` RLE and `labels`; det `boxes`; ink `inklabels`, a PNG) and `confidence` in [0, 1]; cls `--soft`
adds `soft` (the class probabilities). Metadata is the source index's, with `root` (and the image cache) rebased for
this file's location, so `path` resolves as in the index; label files written beside this file (ink PNGs) are
relative to the directory metadata `files` names for their column.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kcomp.artifacts.index import IndexTable, rebased_meta, resolve_in_root, validate_index
from kcomp.artifacts.tables import STDIO, read_table, require_columns, write_table
from kcomp.errors import BadInput, BadUsage

if TYPE_CHECKING:
    import pandas as pd

SCHEMA = "pseudo"
FILE_COLUMNS = ("path", "mask", "inklabels")  # columns naming files, in any task's index
FOLDS_ONLY = ("strategy", "n_folds", "seed", "label_col", "group_col")  # how a folds file split: not these rows'


def write_pseudo(df: pd.DataFrame, path: str | Path, source: IndexTable, *, files: dict[str, str] | None = None,
                 **meta: Any) -> str:
    """`df` (rows of `source` with pseudo labels) under `source`'s rebased metadata; `files` maps a column to the
    directory (relative to `path`'s) its paths are relative to."""
    if str(path) == STDIO and files:
        raise BadUsage("pseudo labels written as files (ink PNGs) need -o PATH, not stdout")
    check_pseudo(df, str(path), source.classes, source.task)
    carried = {k: v for k, v in rebased_meta(source, path).items() if k not in FOLDS_ONLY}
    return write_table(df, path, SCHEMA, **{**carried, "files": files or {}, **meta})


def read_pseudo(path: str | Path) -> IndexTable:
    df, meta = read_table(path, SCHEMA)
    where = "<stdin>" if str(path) == STDIO else str(path)
    base = Path.cwd() if str(path) == STDIO else Path(path).resolve().parent
    root_text = meta.get("root", ".")
    root = Path(root_text) if os.path.isabs(root_text) else (base / root_text).resolve()
    check_pseudo(df, where, list(meta.get("classes", [])), meta.get("task", ""))
    return IndexTable(df, meta, where, root)


def check_pseudo(df: pd.DataFrame, where: str, classes: list[str], task: str) -> None:
    validate_index(df, where, classes=classes, task=task)
    require_columns(df, ["confidence"], where)
    if (df["split"] != "train").any():
        raise BadInput("pseudo rows must have split train", path=where)
    c = df["confidence"].to_numpy(np.float64)
    bad = ~((c >= 0) & (c <= 1))
    if bad.any():
        raise BadInput(f"column confidence has value {c[bad][0]} outside [0, 1]", path=where)


def absolute_rows(table: IndexTable) -> pd.DataFrame:
    """The rows with every file column resolved to an absolute path (each checked not to escape its directory),
    so they can join another table's rows whatever that table's root is."""
    df = table.df.copy()
    base = Path.cwd() if table.source == "<stdin>" else Path(table.source).resolve().parent
    dirs = table.meta.get("files") or {}
    for col in FILE_COLUMNS:
        if col not in df.columns:
            continue
        root = (base / dirs[col]).resolve() if col in dirs else table.root
        df[col] = [str(resolve_in_root(root, p, table.source)) if p else "" for p in df[col].astype(str)]
    return df

"""Index and folds tables: one row per sample; image paths are relative to the data root stored in metadata."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kcomp.artifacts._meta import carried, plain
from kcomp.artifacts.tables import STDIO, read_table, require_columns, write_table
from kcomp.errors import BadInput, shown

if TYPE_CHECKING:
    import pandas as pd

INDEX_COLUMNS = ("id", "path", "split", "height", "width")
SPLITS = ("train", "test")


@dataclass
class IndexTable:
    """An index or folds table with what is needed to find its files and interpret its columns. `checked_absolute`
    is set only in code, never read from a file: the table `train --extra` builds holds pseudo rows whose paths were
    made absolute after each was checked inside its own root (`kcomp.data.training_rows`)."""

    df: pd.DataFrame
    meta: dict[str, Any]
    source: str
    root: Path
    checked_absolute: bool = False

    @property
    def classes(self) -> list[str]:
        return list(self.meta.get("classes", []))

    @property
    def competition(self) -> str:
        return self.meta.get("competition", "")

    @property
    def task(self) -> str:
        return self.meta.get("task", "")

    def rows(self, split: str) -> pd.DataFrame:
        return self.df[self.df["split"] == split].reset_index(drop=True)

    def rows_for(self, ids: Any, where: str | None = None) -> pd.DataFrame:
        """The rows of `ids`, in that order; an id this index lacks is bad input naming `where` (the file the ids
        came from, e.g. predictions made from another index)."""
        df = self.df.set_index("id")
        missing = [i for i in ids if i not in df.index]
        if missing:
            raise BadInput(f"id {missing[0]!r} is not in the index {shown(self.source)}", path=where or self.source)
        return df.loc[list(ids)].reset_index()

    def file(self, rel: str) -> Path:
        if self.checked_absolute and isinstance(rel, str) and os.path.isabs(rel):
            return Path(rel)
        return resolve_in_root(self.root, rel, self.source)

    def relative_file(self, rel: str) -> Path:
        """A file the metadata records relative to the table itself, as `root` is (the prep image cache)."""
        base = Path.cwd() if self.source == "<stdin>" else Path(self.source).resolve().parent
        return Path(rel) if os.path.isabs(rel) else (base / rel).resolve()


def _root_for(path: str | Path, root: Path) -> str:
    """Store the data root (or the image cache) relative to the table's own location, so a data dir can be moved
    as a whole."""
    if str(path) == STDIO:
        return str(root.resolve())
    return os.path.relpath(root.resolve(), Path(path).resolve().parent)


def write_index(df: pd.DataFrame, path: str | Path, *, root: Path, competition: str, task: str,
                classes: list[str], **extra: Any) -> str:
    validate_index(df, str(path), classes=classes, task=task)
    return write_table(df, path, "index", root=_root_for(path, root), competition=competition, task=task,
                       classes=classes, **extra)


def write_folds(table: IndexTable, folds: Any, path: str | Path, **extra: Any) -> str:
    df = table.df.copy()
    df["fold"] = folds
    meta = rebased_meta(table, path)
    meta["index_command"] = table.meta.get("command")
    return write_table(df, path, "folds", **{**meta, **extra})


def rebased_meta(table: IndexTable, path: str | Path) -> dict[str, Any]:
    """The metadata a table derived from `table` and written to `path` carries: the root and the image cache
    rebased for `path`'s own location (derived tables are often written beside other files than the index)."""
    meta = carried(table.meta, "root")
    if "image_cache" in meta:
        cache = meta["image_cache"]
        meta["image_cache"] = {**cache, "path": _root_for(path, table.relative_file(cache["path"]))}
    return {**meta, "root": _root_for(path, table.root)}


def read_index(path: str | Path, accept: str | tuple[str, ...] = ("index", "folds")) -> IndexTable:
    df, meta = read_table(path, accept)
    where = "<stdin>" if str(path) == STDIO else str(path)
    base = Path.cwd() if str(path) == STDIO else Path(path).resolve().parent
    root = (base / meta.get("root", ".")).resolve()  # symlinks resolved: containment is checked on real paths
    validate_index(df, where, classes=meta.get("classes", []), task=meta.get("task", ""))
    if meta["schema"]["name"] == "folds":
        require_columns(df, ["fold"], where)
        check_integers(df, "fold", where, low=-1)
    return IndexTable(df, meta, where, root)


def validate_index(df: pd.DataFrame, where: str, *, classes: list[str], task: str) -> None:
    """Catch what would otherwise fail deep inside training: missing or duplicate ids, bad splits and paths, image
    sizes that are not positive, labels that are not class numbers."""
    require_columns(df, INDEX_COLUMNS, where)
    for col in ("id", "path"):
        if df[col].isna().any():
            raise BadInput(f"column {col} is empty for {int(df[col].isna().sum())} row(s)", path=where)
    dup = df["id"][df["id"].duplicated()]
    if len(dup):
        raise BadInput(f"duplicate id {dup.iloc[0]!r} ({len(dup)} duplicates)", path=where)
    bad_path = df["path"][[not isinstance(p, str) or not p for p in df["path"]]]
    if len(bad_path):
        raise BadInput(f"column path has value {plain(bad_path.iloc[0])!r}; expected a file path", path=where)
    bad = sorted(set(map(str, df["split"])) - set(SPLITS))
    if bad:
        raise BadInput(f"column split has value {bad[0]!r}; expected train or test", path=where)
    for col in ("height", "width"):
        check_integers(df, col, where, low=1)
    if "boxes" in df.columns:
        _check_index_boxes(df, where)
    if task == "cls" and "label" in df.columns:
        train = df[df["split"] == "train"]["label"]
        if train.isna().any():
            raise BadInput(f"column label is empty for {int(train.isna().sum())} train row(s)", path=where)
        check_integers(df[df["split"] == "train"], "label", where, low=0, high=len(classes) - 1 if classes else None)


def _check_index_boxes(df: pd.DataFrame, where: str) -> None:
    """det: each cell a list (empty = no object) of {x1, y1, x2, y2, label} with finite coordinates."""
    import math

    for i, boxes in zip(df["id"], df["boxes"], strict=True):
        if boxes is None:
            continue
        if isinstance(boxes, (str, bytes, dict)) or not hasattr(boxes, "__len__"):
            raise BadInput(f"column boxes for id {i!r} is {plain(boxes)!r:.60}, expected a list of boxes", path=where)
        for b in boxes:
            coords = [b.get(k) for k in ("x1", "y1", "x2", "y2")] if isinstance(b, dict) else [None]
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in coords) \
                    or b.get("label") is None:
                raise BadInput(f"column boxes for id {i!r} holds {b!r:.80}, expected {{x1, y1, x2, y2, label}} with "
                               f"finite coordinates", path=where)


def check_integers(df: pd.DataFrame, col: str, where: str, *, low: int, high: int | None = None) -> None:
    """A column of whole numbers in [low, high]: text, fractions, empty cells and values out of range are one
    line naming the column and the first bad value."""
    import numpy as np
    import pandas as pd

    values = df[col]
    if not (pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)):
        first = next((v for v in values if not isinstance(v, (int, float, np.integer, np.floating))), values.iloc[0])
        raise BadInput(f"column {col} has value {plain(first)!r}; expected whole numbers", path=where)
    numbers = values.to_numpy(dtype=float, na_value=np.nan)
    bad = np.isnan(numbers) | (numbers % 1 != 0) | (numbers < low) | ((numbers > high) if high is not None else False)
    if bad.any():
        i = int(np.argmax(bad))
        v, row = numbers[i], f"(id {df['id'].iloc[i]!r})"
        if np.isnan(v) or v % 1:
            why = "is empty" if np.isnan(v) else f"has value {v:g}, not a whole number"
            raise BadInput(f"column {col} {why} {row}", path=where)
        span = f"outside {low}..{high}" if high is not None else f"below {low}"
        raise BadInput(f"column {col} has value {v:.0f} {span} {row}", path=where)


def resolve_in_root(root: Path, rel: str, where: str) -> Path:
    """Paths in an index are relative and cannot point outside its data root: checked on the path as written and
    on the real file it names (a symlink inside the root that leads outside is an escape too). `root` is the
    resolved data root."""
    if not isinstance(rel, str) or not rel:
        raise BadInput(f"path {rel!r} is not a relative file path", path=where)
    p = Path(rel)
    if p.is_absolute():
        raise BadInput(f"absolute path {rel!r} not allowed in an index (paths are relative to its data root)",
                       path=where)
    full = Path(os.path.normpath(root / p))
    if not full.is_relative_to(root) or not Path(os.path.realpath(full)).is_relative_to(root):
        raise BadInput(f"path {rel!r} escapes the data root {root}", path=where)
    return full

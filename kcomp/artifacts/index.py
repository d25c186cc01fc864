"""Index and folds tables: one row per sample; image paths are relative to the data root stored in metadata."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kcomp.artifacts._meta import carried
from kcomp.artifacts.tables import STDIO, read_table, require_columns, write_table
from kcomp.errors import BadInput

if TYPE_CHECKING:
    import pandas as pd

INDEX_COLUMNS = ("id", "path", "split", "height", "width")
SPLITS = ("train", "test")


@dataclass
class IndexTable:
    """An index or folds table with what is needed to find its files and interpret its columns."""

    df: pd.DataFrame
    meta: dict[str, Any]
    source: str
    root: Path

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

    def file(self, rel: str) -> Path:
        return resolve_in_root(self.root, rel, self.source, allow_absolute=bool(self.meta.get("allow_absolute")))

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
    root_text = meta.get("root", ".")
    base = Path.cwd() if str(path) == STDIO else Path(path).resolve().parent
    root = Path(root_text) if os.path.isabs(root_text) else (base / root_text).resolve()
    validate_index(df, where, classes=meta.get("classes", []), task=meta.get("task", ""))
    if meta["schema"]["name"] == "folds":
        require_columns(df, ["fold"], where)
    return IndexTable(df, meta, where, root)


def validate_index(df: pd.DataFrame, where: str, *, classes: list[str], task: str) -> None:
    """Catch what would otherwise fail deep inside training: duplicate ids, bad splits, labels out of range."""
    require_columns(df, INDEX_COLUMNS, where)
    dup = df["id"][df["id"].duplicated()]
    if len(dup):
        raise BadInput(f"duplicate id {dup.iloc[0]!r} ({len(dup)} duplicates)", path=where)
    bad = sorted(set(df["split"]) - set(SPLITS))
    if bad:
        raise BadInput(f"column split has value {bad[0]!r}; expected train or test", path=where)
    if task == "cls" and "label" in df.columns:
        train = df[df["split"] == "train"]["label"]
        if train.isna().any():
            raise BadInput(f"column label is empty for {int(train.isna().sum())} train row(s)", path=where)
        out = train[(train < 0) | (train >= len(classes))] if classes else train[train < 0]
        if len(out):
            raise BadInput(f"column label has value {out.iloc[0]} outside 0..{len(classes) - 1}", path=where)


def resolve_in_root(root: Path, rel: str, where: str, *, allow_absolute: bool = False) -> Path:
    """Paths in an index cannot point outside its data root, unless the index was written to allow it."""
    p = Path(rel)
    if p.is_absolute():
        if not allow_absolute:
            raise BadInput(f"absolute path {rel!r} not allowed in an index", path=where)
        return p
    full = Path(os.path.normpath(root / p))
    if not full.is_relative_to(root):
        raise BadInput(f"path {rel!r} escapes the data root {root}", path=where)
    return full

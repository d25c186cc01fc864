"""A fold's training and validation rows, with the data-centric changes applied to the training rows only.

`train --drop ISSUES` leaves flagged rows out of training, `--relabel ISSUES` trains them on the suggested label
(both from `kcomp clean`), `--extra PSEUDO` adds pseudo-labelled rows (`kcomp pseudo`). Validation rows are the
folds file's, never changed or extended, so CV scores stay comparable with runs trained without these options.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from kcomp.errors import BadInput, BadUsage

if TYPE_CHECKING:
    import pandas as pd

    from kcomp.artifacts.index import IndexTable
    from kcomp.artifacts.label_issues import LabelIssues


@dataclass
class FoldRows:
    """`train` resolves its files through `table` (the folds table, or when pseudo rows were added a copy in which
    their already checked paths are absolute); `val` is exactly the folds file's fold and resolves through it too."""

    table: IndexTable
    train: pd.DataFrame
    val: pd.DataFrame
    dropped: list[str] = field(default_factory=list)
    relabelled: list[str] = field(default_factory=list)
    added: int = 0


def fold_rows(table: IndexTable, fold: int, *, drop: LabelIssues | None = None, relabel: LabelIssues | None = None,
              extra: Sequence[IndexTable] = ()) -> FoldRows:
    """Training rows: the train rows outside `fold` (fold >= 0), less `drop`'s rows, with `relabel`'s rows on their
    suggested label, plus every row of each `extra` pseudo table. Validation rows: the train rows of `fold`."""
    df = table.df
    labelled = df[(df["split"] == "train") & (df["fold"] >= 0)]
    train = labelled[labelled["fold"] != fold].reset_index(drop=True)
    val = labelled[labelled["fold"] == fold].reset_index(drop=True)
    if len(train) == 0 or len(val) == 0:
        raise BadInput(f"fold {fold} leaves {len(train)} training and {len(val)} validation rows", path=table.source)
    out = FoldRows(table, train, val)
    known = set(labelled["id"])
    if drop is not None and relabel is not None:
        both = sorted(set(drop.df["id"]) & set(relabel.df["id"]), key=str)
        if both:
            raise BadUsage(f"id {both[0]!r} is in both --drop {drop.source} and --relabel {relabel.source}")
    if drop is not None:
        out.train, out.dropped = _drop(out.train, set(_flagged(drop, table, known)))
    if relabel is not None:
        _flagged(relabel, table, known)
        out.train, out.relabelled = _relabel(out.train, relabel)
    taken = set(df["id"][df["split"] == "train"])  # a pseudo row is an unlabelled (test) row, never a labelled one
    for pseudo in extra:
        out.table, out.train = _add(out.table, out.train, pseudo, taken)
        taken |= set(pseudo.df["id"])
        out.added += len(pseudo.df)
    return out


def _flagged(issues: LabelIssues, table: IndexTable, known: set) -> list:
    """The issue ids, checked to be labelled rows of this folds table with the same classes."""
    if table.classes and issues.classes != table.classes:
        raise BadInput(f"classes {issues.classes} differ from the folds file's {table.classes}", path=issues.source)
    if issues.target not in table.df.columns:
        raise BadInput(f"its target column {issues.target!r} is not in {table.source}", path=issues.source)
    unknown = [i for i in issues.df["id"] if i not in known]
    if unknown:
        raise BadInput(f"id {unknown[0]!r} is not a labelled train row of {table.source} ({len(unknown)} such "
                       "ids): issues of another data set?", path=issues.source)
    return list(issues.df["id"])


def _drop(train: pd.DataFrame, ids: set) -> tuple[pd.DataFrame, list[str]]:
    gone = train["id"].isin(ids)
    return train[~gone].reset_index(drop=True), train["id"][gone].tolist()


def _relabel(train: pd.DataFrame, issues: LabelIssues) -> tuple[pd.DataFrame, list[str]]:
    """The suggested class, stored as the target column stores classes (an index, or the class name)."""
    col = issues.target
    suggested = dict(zip(issues.df["id"], issues.df["suggested"], strict=True))
    hit = train["id"].isin(suggested)
    train = train.copy()
    values = [suggested[i] for i in train["id"][hit]]
    if train[col].dtype.kind in "iu":
        train.loc[hit, col] = values
    else:
        train.loc[hit, col] = [issues.classes[int(k)] for k in values]
    return train, train["id"][hit].tolist()


def _add(table: IndexTable, train: pd.DataFrame, pseudo: IndexTable, taken: set) -> tuple[IndexTable, pd.DataFrame]:
    """Pseudo rows joined to the training rows with absolute file paths (checked against their own roots), and a
    table that accepts them; its image cache is kept only when the pseudo rows index the same cache file."""
    import pandas as pd

    from kcomp.artifacts.index import IndexTable
    from kcomp.artifacts.pseudo import absolute_rows
    from kcomp.data.image_cache import META_KEY, ROW_COLUMN

    if pseudo.task != table.task or (table.classes and pseudo.classes != table.classes):
        raise BadInput(f"task {pseudo.task} / classes {pseudo.classes} differ from the folds file's "
                       f"{table.task} / {table.classes}", path=pseudo.source)
    clash = [i for i in pseudo.df["id"] if i in taken]
    if clash:
        raise BadInput(f"id {clash[0]!r} is already a train row of {table.source} or of another --extra file "
                       f"({len(clash)} such ids)", path=pseudo.source)
    if not table.checked_absolute:
        _check_relative(train, table)
    rows = absolute_rows(pseudo)
    meta = dict(table.meta)
    if META_KEY in meta and _cache_file(pseudo) != _cache_file(table):
        meta.pop(META_KEY)  # rows of two caches cannot share one: decode the image files instead
    if META_KEY not in meta:
        rows = rows.drop(columns=[ROW_COLUMN], errors="ignore")
        train = train.drop(columns=[ROW_COLUMN], errors="ignore")
    rows["fold"] = -1  # never validated
    keep = [c for c in rows.columns if c in train.columns or c in ("soft", "confidence")]
    joined = pd.concat([train, rows[keep]], ignore_index=True)
    return IndexTable(table.df, meta, table.source, table.root, checked_absolute=True), joined


def _check_relative(train: pd.DataFrame, table: IndexTable) -> None:
    """The folds file's own paths keep their rule (relative, inside the root) once the table accepts absolute ones."""
    from kcomp.artifacts.pseudo import FILE_COLUMNS

    for col in FILE_COLUMNS:
        if col in train.columns:
            for p in train[col].astype(str):
                if p:
                    table.file(p)


def _cache_file(table: IndexTable) -> str | None:
    from kcomp.data.image_cache import META_KEY

    info = table.meta.get(META_KEY)
    return str(table.relative_file(info["path"])) if info else None

"""Assign cross-validation folds to the train rows of an index dataframe.

Index conventions: `split` is "train"/"test" (a frame without `split` is all train); `label` holds one class
per row; `labels` holds multi-label targets as equal-length 0/1 vectors (list, tuple or numpy array per cell;
turn lists of class indices into 0/1 vectors before calling); `group` holds a group id (patient, study, ...)
whose rows must never be split across folds.

Only train rows are split, in their own order, so where test rows sit in the frame never changes the folds.
pandas, numpy and scikit-learn are imported inside functions so that importing this module stays cheap.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kcomp.errors import BadInput, BadUsage
from kcomp.options import SEED, Checked, Choice, Int, Text, lazy, option

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

STRATEGIES = ("auto", "kfold", "stratified", "group", "multilabel")

LABEL_COL = "label"
LABELS_COL = "labels"
GROUP_COL = "group"
SPLIT_COL = "split"


@dataclass(frozen=True)
class SplitOptions(Checked):
    """What `kcomp split` was asked, checked on creation (each field with its Spec, as `TrainOptions`)."""

    folds: int = option(Int(2), 5)
    strategy: str = option(Choice(lazy("kcomp.data.split", "STRATEGIES"), what="split strategy"), "auto")
    seed: int = option(SEED, 42)
    label_col: str | None = option(Text())  # None: label / labels, whichever the index has
    group_col: str | None = option(Text())


def _is_listlike(value: object) -> bool:
    import numpy as np

    return isinstance(value, (list, tuple, np.ndarray))


def _is_multilabel_column(df: pd.DataFrame, col: str) -> bool:
    """A column is multi-label when its first non-null cell is a vector; scalars mean one class per row."""
    for value in df[col]:
        if _is_listlike(value):
            return True
        if value is not None and value == value:  # skip None/NaN
            return False
    return False


def _require(df: pd.DataFrame, col: str, strategy: str, what: str) -> None:
    if col not in df.columns:
        raise BadUsage(f"strategy {strategy!r} needs {what} column {col!r}, which the index does not have")


def resolve_strategy(
    df: pd.DataFrame, strategy: str, label_col: str | None, group_col: str | None
) -> tuple[str, str | None, str | None]:
    """What `auto` picks, and which label/group columns are used.

    Returns (strategy, label_col, group_col) with `auto` replaced by a concrete strategy and the columns
    set to those the splitter will actually read (None when unused), so callers can log and record it.
    """
    if strategy not in STRATEGIES:
        raise BadUsage(f"unknown split strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    # Columns named explicitly must exist, whatever the strategy.
    if label_col is not None and label_col not in df.columns:
        raise BadUsage(f"label column {label_col!r} (strategy {strategy!r}) is not in the index")
    if group_col is not None and group_col not in df.columns:
        raise BadUsage(f"group column {group_col!r} (strategy {strategy!r}) is not in the index")

    if strategy == "auto":
        if group_col is not None or GROUP_COL in df.columns:
            strategy = "group"
        elif label_col is not None:
            strategy = "multilabel" if _is_multilabel_column(df, label_col) else "stratified"
        elif LABELS_COL in df.columns:
            strategy = "multilabel"
        elif LABEL_COL in df.columns:
            strategy = "stratified"
        else:
            strategy = "kfold"

    if strategy == "kfold":
        return "kfold", None, None
    if strategy == "stratified":
        col = label_col or LABEL_COL
        _require(df, col, strategy, "label")
        if _is_multilabel_column(df, col):
            raise BadUsage(f"column {col!r} holds multi-label vectors; use strategy 'multilabel', not 'stratified'")
        return "stratified", col, None
    if strategy == "multilabel":
        col = label_col or LABELS_COL
        _require(df, col, strategy, "multi-label")
        return "multilabel", col, None
    # group: stratify by a single-label column when there is one; multi-label targets cannot be.
    gcol = group_col or GROUP_COL
    _require(df, gcol, strategy, "group")
    if label_col is not None:
        if _is_multilabel_column(df, label_col):
            raise BadUsage(
                f"strategy 'group' cannot stratify by multi-label column {label_col!r}; drop the label column"
            )
        return "group", label_col, gcol
    if LABEL_COL in df.columns and not _is_multilabel_column(df, LABEL_COL):
        return "group", LABEL_COL, gcol
    return "group", None, gcol


def _class_name(value: object) -> str:
    value = value.item() if hasattr(value, "item") else value
    return repr(value)


def _check_no_nan(values: pd.Series, col: str) -> None:
    import pandas as pd

    missing = pd.isna(values).to_numpy()
    if missing.any():
        raise BadInput(f"column {col!r} is empty (NaN) on {int(missing.sum())} train rows")


def _multilabel_matrix(values: pd.Series, col: str) -> np.ndarray:
    """Stack per-row 0/1 vectors into an (n_rows, n_classes) int matrix, rejecting ragged or non-binary cells."""
    import numpy as np

    rows = []
    width = None
    for pos, cell in enumerate(values):
        if not _is_listlike(cell):
            raise BadInput(f"column {col!r}: train row {pos} holds {cell!r}, not a 0/1 vector")
        vec = np.asarray(cell)
        if vec.ndim != 1:
            raise BadInput(f"column {col!r}: train row {pos} is not a flat 0/1 vector")
        if width is None:
            width = len(vec)
        elif len(vec) != width:
            raise BadInput(f"column {col!r}: train row {pos} has {len(vec)} entries, earlier rows have {width}")
        if not np.isin(vec, (0, 1)).all():
            raise BadInput(
                f"column {col!r}: train row {pos} has values other than 0/1 (class-index lists must be "
                "converted to 0/1 vectors)"
            )
        rows.append(vec.astype(np.int64))
    if not width:
        raise BadInput(f"column {col!r} holds empty vectors; nothing to stratify on")
    return np.stack(rows)


def assign_folds(
    df: pd.DataFrame,
    *,
    n_folds: int = 5,
    strategy: str = "auto",
    seed: int = 42,
    label_col: str | None = None,
    group_col: str | None = None,
) -> np.ndarray:
    """Return an int64 array (len(df)) with the fold of each row; rows whose `split` column is not "train" get -1.

    Folds are a pure function of the train rows (in order) and `seed`, so reruns reproduce them exactly.
    Impossible requests raise BadInput rather than letting scikit-learn warn and produce skewed folds.
    """
    import numpy as np

    strategy, label_col, group_col = resolve_strategy(df, strategy, label_col, group_col)
    if n_folds < 2:
        raise BadInput(f"--folds must be at least 2, got {n_folds}")

    if SPLIT_COL in df.columns:
        is_train = (df[SPLIT_COL] == "train").fillna(False).to_numpy(dtype=bool)
    else:
        is_train = np.ones(len(df), dtype=bool)
    train_idx = np.flatnonzero(is_train)
    n_train = len(train_idx)
    if n_train < n_folds:
        raise BadInput(f"only {n_train} train rows, fewer than --folds {n_folds}")
    splitter = _SPLITTERS[strategy]
    splits = splitter(df.iloc[train_idx], n_folds, seed, label_col, group_col)

    folds = np.full(len(df), -1, dtype=np.int64)
    for fold, (_, val) in enumerate(splits):
        folds[train_idx[val]] = fold
    return folds


# One splitter per strategy: (train rows, n_folds, seed, label column, group column) -> (train, val) index pairs.
Splits = Iterable[tuple[Any, Any]]


def _kfold(train: pd.DataFrame, n_folds: int, seed: int, label_col: str | None, group_col: str | None) -> Splits:
    import numpy as np
    from sklearn.model_selection import KFold

    return KFold(n_splits=n_folds, shuffle=True, random_state=seed).split(np.zeros(len(train)))


def _stratified(train: pd.DataFrame, n_folds: int, seed: int, label_col: str | None,
                group_col: str | None) -> Splits:
    import numpy as np
    from sklearn.model_selection import StratifiedKFold

    y = train[label_col]
    _check_no_nan(y, label_col)
    counts = y.value_counts(sort=False)
    for value, count in counts.items():
        if count < n_folds:
            raise BadInput(
                f"column {label_col!r}: class {_class_name(value)} has {count} train rows, "
                f"fewer than --folds {n_folds}"
            )
    x = np.zeros(len(train))
    return StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed).split(x, y.to_numpy())


def _multilabel(train: pd.DataFrame, n_folds: int, seed: int, label_col: str | None,
                group_col: str | None) -> Splits:
    import numpy as np
    from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

    cells = train[label_col]
    missing = [c is None or (not _is_listlike(c) and c != c) for c in cells]
    if any(missing):
        raise BadInput(f"column {label_col!r} is empty (NaN) on {sum(missing)} train rows")
    y = _multilabel_matrix(cells, label_col)
    positives = y.sum(axis=0)
    for k, count in enumerate(positives):
        if count < n_folds:
            raise BadInput(
                f"column {label_col!r}: class index {k} is positive in {int(count)} train rows, "
                f"fewer than --folds {n_folds}"
            )
    splitter = MultilabelStratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    return splitter.split(np.zeros(len(train)), y)


def _group(train: pd.DataFrame, n_folds: int, seed: int, label_col: str | None, group_col: str | None) -> Splits:
    import warnings

    import numpy as np
    from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

    groups = train[group_col]
    _check_no_nan(groups, group_col)
    n_groups = groups.nunique()
    if n_groups < n_folds:
        raise BadInput(f"column {group_col!r} has {n_groups} distinct groups, fewer than --folds {n_folds}")
    groups = groups.to_numpy()
    x = np.zeros(len(train))
    if label_col is None:
        return GroupKFold(n_splits=n_folds, shuffle=True, random_state=seed).split(x, groups=groups)
    y = train[label_col]
    _check_no_nan(y, label_col)
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    # Stratification across groups is best effort; sklearn warns about rare classes, which is noise here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return list(splitter.split(x, y.to_numpy(), groups))


_SPLITTERS = {"kfold": _kfold, "stratified": _stratified, "multilabel": _multilabel, "group": _group}

"""Fold assignment: partitions, balance, group purity, determinism, `auto` choice and error messages."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kcomp.data.split import STRATEGIES, assign_folds, resolve_strategy
from kcomp.errors import BadInput, BadUsage


def make_index(n_train=60, n_test=10, *, label=False, labels=False, group=False, n_classes=3, seed=0):
    """A small index: train rows then test rows, with the requested target/group columns."""
    rng = np.random.default_rng(seed)
    n = n_train + n_test
    cols = {"image_id": [f"img{i}" for i in range(n)], "split": ["train"] * n_train + ["test"] * n_test}
    if label:
        cols["label"] = np.arange(n) % n_classes
    if labels:
        cols["labels"] = [rng.integers(0, 2, n_classes) for _ in range(n)]
    if group:
        cols["group"] = [f"g{i // 3}" for i in range(n)]
    return pd.DataFrame(cols)


def check_partition(df, folds, n_folds):
    """Every train row in exactly one fold in [0, n), every fold used, non-train rows -1."""
    assert folds.dtype == np.int64 and folds.shape == (len(df),)
    train = (df["split"] == "train").to_numpy()
    assert (folds[~train] == -1).all()
    assert ((folds[train] >= 0) & (folds[train] < n_folds)).all()
    assert set(folds[train]) == set(range(n_folds))


# ---------------------------------------------------------------------------------------------- strategies


@pytest.mark.parametrize(
    "cols, expected",
    [
        ({"group": True, "label": True}, ("group", "label", "group")),
        ({"group": True}, ("group", None, "group")),
        ({"group": True, "labels": True}, ("group", None, "group")),
        ({"labels": True, "label": True}, ("multilabel", "labels", None)),
        ({"labels": True}, ("multilabel", "labels", None)),
        ({"label": True}, ("stratified", "label", None)),
        ({}, ("kfold", None, None)),
    ],
)
def test_auto_picks_strategy(cols, expected):
    assert resolve_strategy(make_index(**cols), "auto", None, None) == expected


def test_auto_with_explicit_columns():
    df = make_index(label=True, labels=True).rename(columns={"label": "cls", "labels": "tags"})
    assert resolve_strategy(df, "auto", "cls", None) == ("stratified", "cls", None)
    assert resolve_strategy(df, "auto", "tags", None) == ("multilabel", "tags", None)
    df["patient"] = "p" + (np.arange(len(df)) // 2).astype(str)
    assert resolve_strategy(df, "auto", "cls", "patient") == ("group", "cls", "patient")


def test_kfold_partitions_and_sizes():
    df = make_index(n_train=53)
    folds = assign_folds(df, n_folds=5, strategy="kfold")
    check_partition(df, folds, 5)
    sizes = np.bincount(folds[folds >= 0])
    assert sizes.max() - sizes.min() <= 1


def test_stratified_balances_classes():
    df = make_index(n_train=97, label=True, n_classes=4)
    folds = assign_folds(df, n_folds=5)
    check_partition(df, folds, 5)
    train = df["split"] == "train"
    for cls, count in df.loc[train, "label"].value_counts().items():
        per_fold = np.bincount(folds[train & (df["label"] == cls)], minlength=5)
        assert np.abs(per_fold - count / 5).max() <= 1, (cls, per_fold)


@pytest.mark.parametrize("with_label", [False, True])
def test_group_never_splits_a_group(with_label):
    df = make_index(n_train=90, group=True, label=with_label)
    folds = assign_folds(df, n_folds=4, strategy="group")
    check_partition(df, folds, 4)
    train = df["split"] == "train"
    assert (df[train].assign(fold=folds[train.to_numpy()]).groupby("group")["fold"].nunique() == 1).all()


def test_group_seed_matters():
    df = make_index(n_train=90, group=True)
    runs = {tuple(assign_folds(df, n_folds=3, strategy="group", seed=s)) for s in range(4)}
    assert len(runs) > 1


def _max_deviation(folds, y, n_folds):
    """Largest |positives of a class in a fold - expected| over classes and folds."""
    per_fold = np.stack([y[folds == f].sum(axis=0) for f in range(n_folds)])
    return np.abs(per_fold - y.sum(axis=0) / n_folds).max()


def test_multilabel_balances_positives_better_than_kfold():
    rng = np.random.default_rng(1)
    n, k, n_folds = 200, 6, 5
    y = (rng.random((n, k)) < np.linspace(0.05, 0.5, k)).astype(int)
    df = pd.DataFrame({"split": "train", "labels": list(y)})
    folds = assign_folds(df, n_folds=n_folds, strategy="multilabel", seed=0)
    check_partition(df, folds, n_folds)
    ml_dev = _max_deviation(folds, y, n_folds)
    kf_devs = [_max_deviation(assign_folds(df, n_folds=n_folds, strategy="kfold", seed=s), y, n_folds)
               for s in range(5)]
    assert ml_dev <= 1.5, ml_dev
    assert ml_dev < min(kf_devs), (ml_dev, kf_devs)


def test_multilabel_accepts_lists_and_arrays():
    y = [[1, 0], [0, 1], [1, 1], [0, 0]] * 5
    as_lists = pd.DataFrame({"split": "train", "labels": y})
    as_arrays = pd.DataFrame({"split": "train", "labels": [np.array(v) for v in y]})
    assert (assign_folds(as_lists, n_folds=3) == assign_folds(as_arrays, n_folds=3)).all()


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_deterministic_by_seed(strategy):
    df = make_index(n_train=90, label=True, labels=True, group=True, n_classes=3)
    if strategy in ("stratified", "multilabel", "kfold"):
        df = df.drop(columns="group")
    a = assign_folds(df, n_folds=3, strategy=strategy, seed=7)
    b = assign_folds(df.copy(), n_folds=3, strategy=strategy, seed=7)
    assert (a == b).all()
    others = [assign_folds(df, n_folds=3, strategy=strategy, seed=s) for s in (8, 9, 10)]
    assert any((a != o).any() for o in others)


@pytest.mark.parametrize("cols", [{}, {"label": True}, {"labels": True}, {"group": True, "label": True}])
def test_test_row_positions_do_not_matter(cols):
    df = make_index(n_train=60, n_test=30, **cols)
    base = assign_folds(df, n_folds=4, seed=3)
    # Interleave test rows among train rows while keeping train rows in their order.
    rng = np.random.default_rng(0)
    order = np.empty(len(df), dtype=int)
    test_slots = np.sort(rng.choice(len(df), size=30, replace=False))
    train_slots = np.setdiff1d(np.arange(len(df)), test_slots)
    order[train_slots] = np.arange(60)
    order[test_slots] = rng.permutation(np.arange(60, 90))
    shuffled = df.iloc[order].reset_index(drop=True)
    moved = assign_folds(shuffled, n_folds=4, seed=3)
    assert (moved[train_slots] == base[:60]).all()
    assert (moved[test_slots] == -1).all()


def test_non_train_split_values_get_minus_one():
    df = make_index(n_train=20, n_test=0)
    df.loc[[0, 5], "split"] = ["holdout", None]
    folds = assign_folds(df, n_folds=3)
    assert folds[0] == -1 and folds[5] == -1 and (np.delete(folds, [0, 5]) >= 0).all()


def test_no_split_column_means_all_train():
    df = pd.DataFrame({"label": np.arange(20) % 2})
    assert (assign_folds(df, n_folds=4) >= 0).all()


# ---------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "strategy, col",
    [("stratified", "'label'"), ("multilabel", "'labels'"), ("group", "'group'")],
)
def test_missing_column_for_explicit_strategy(strategy, col):
    with pytest.raises(BadUsage, match=f"{strategy}.*{col}|{col}.*{strategy}"):
        assign_folds(make_index(), strategy=strategy)


def test_explicit_column_missing_and_unknown_strategy():
    with pytest.raises(BadUsage, match="'cls'"):
        assign_folds(make_index(label=True), label_col="cls")
    with pytest.raises(BadUsage, match="'patient'"):
        assign_folds(make_index(label=True), group_col="patient")
    with pytest.raises(BadUsage, match="'random'"):
        assign_folds(make_index(), strategy="random")


def test_too_few_folds_or_rows():
    with pytest.raises(BadInput, match="at least 2, got 1"):
        assign_folds(make_index(), n_folds=1)
    with pytest.raises(BadInput, match="only 4 train rows, fewer than --folds 5"):
        assign_folds(make_index(n_train=4, n_test=20), n_folds=5)


def test_rare_class_named():
    df = make_index(n_train=40, label=True, n_classes=2)
    df.loc[[0, 1], "label"] = 3
    with pytest.raises(BadInput, match=r"class 3 has 2 train rows, fewer than --folds 5"):
        assign_folds(df, n_folds=5)


def test_rare_string_class_named():
    df = pd.DataFrame({"split": "train", "label": ["cat"] * 10 + ["dog"] * 2})
    with pytest.raises(BadInput, match=r"class 'dog' has 2 train rows"):
        assign_folds(df, n_folds=3)


def test_rare_class_in_test_rows_is_ignored():
    df = make_index(n_train=40, n_test=5, label=True, n_classes=2)
    df.loc[df.index[-1], "label"] = 9
    check_partition(df, assign_folds(df, n_folds=5), 5)


def test_too_few_groups():
    df = pd.DataFrame({"split": "train", "group": ["a", "b", "c"] * 4})
    with pytest.raises(BadInput, match=r"'group' has 3 distinct groups, fewer than --folds 4"):
        assign_folds(df, n_folds=4)


def test_rare_multilabel_class_index():
    y = [[1, 0, 1]] * 10 + [[0, 1, 1]] * 2
    df = pd.DataFrame({"split": "train", "labels": y})
    with pytest.raises(BadInput, match=r"class index 1 is positive in 2 train rows, fewer than --folds 3"):
        assign_folds(df, n_folds=3)


@pytest.mark.parametrize(
    "cells, match",
    [
        ([[1, 0]] * 5 + [[1, 0, 1]], "row 5 has 3 entries, earlier rows have 2"),
        ([[1, 0]] * 5 + [[2, 0]], "other than 0/1"),
    ],
)
def test_bad_multilabel_cells(cells, match):
    with pytest.raises(BadInput, match=match):
        assign_folds(pd.DataFrame({"split": "train", "labels": cells}), n_folds=2)


@pytest.mark.parametrize("col, strategy", [("label", "stratified"), ("group", "group"), ("labels", "multilabel")])
def test_nan_on_train_rows_named(col, strategy):
    df = make_index(n_train=30, label=True, labels=True, group=True)
    df[col] = df[col].astype(object)
    df.at[3, col] = None if col == "labels" else np.nan
    with pytest.raises(BadInput, match=f"'{col}'.*NaN"):
        assign_folds(df, n_folds=3, strategy=strategy)


def test_nan_on_test_rows_is_fine():
    df = make_index(n_train=30, n_test=5, label=True)
    df["label"] = df["label"].astype(float)
    df.loc[df.index[-1], "label"] = np.nan
    check_partition(df, assign_folds(df, n_folds=3), 3)


# ---------------------------------------------------------------------------------------------- property


@settings(max_examples=25, deadline=None)
@given(
    n_folds=st.integers(2, 6),
    extra=st.lists(st.integers(0, 12), min_size=1, max_size=5),
    n_test=st.integers(0, 5),
    seed=st.integers(0, 2**31 - 1),
    perm_seed=st.integers(0, 1000),
)
def test_stratified_property(n_folds, extra, n_test, seed, perm_seed):
    counts = [n_folds + e for e in extra]  # every class has at least n_folds members
    labels = np.repeat(np.arange(len(counts)), counts)
    labels = np.random.default_rng(perm_seed).permutation(labels)
    df = pd.DataFrame(
        {
            "split": ["train"] * len(labels) + ["test"] * n_test,
            "label": np.concatenate([labels, np.zeros(n_test, dtype=int)]),
        }
    )
    folds = assign_folds(df, n_folds=n_folds, seed=seed)
    check_partition(df, folds, n_folds)
    train_folds = folds[: len(labels)]
    for cls, count in enumerate(counts):
        per_fold = np.bincount(train_folds[labels == cls], minlength=n_folds)
        assert per_fold.sum() == count
        assert np.abs(per_fold - count / n_folds).max() <= 1

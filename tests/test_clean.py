"""`kcomp clean`: label issues found by cleanlab from OOF probabilities (acceptance: 20% flipped labels found with
recall and precision >= 0.7), the artifact it writes, and its error contract."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kcomp.artifacts.label_issues import read_label_issues
from kcomp.artifacts.predictions import write_predictions
from tests.conftest import run_chain, run_cli

FLIP = 0.2


def _flip(labels: np.ndarray, share: float, n_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`share` of the labels moved to another class at random (seeded); returns (noisy labels, flipped rows)."""
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(labels), round(share * len(labels)), replace=False)
    noisy = labels.copy()
    noisy[rows] = (labels[rows] + rng.integers(1, n_classes, len(rows))) % n_classes
    return noisy, np.sort(rows)


@pytest.fixture(scope="module")
def digits_oof(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Real OOF probabilities: sklearn's bundled 8x8 digits with 20% of the labels flipped, each row predicted by a
    linear discriminant fitted on the other folds (cross_val_predict), as `kcomp oof` would write them."""
    from sklearn.datasets import load_digits
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    x, y = load_digits(return_X_y=True)
    noisy, flipped = _flip(y, FLIP, 10, seed=0)
    cv = StratifiedKFold(5, shuffle=True, random_state=0)
    probs = cross_val_predict(LinearDiscriminantAnalysis(), x / 16.0, noisy, cv=cv, method="predict_proba")
    folds = np.zeros(len(y), np.int64)
    for k, (_, val) in enumerate(cv.split(x, noisy)):
        folds[val] = k
    ids = [f"digit_{i:04d}.png" for i in range(len(y))]
    df = pd.DataFrame({"id": ids, "fold": folds, "probs": list(probs.astype(np.float32)), "target": noisy})
    path = tmp_path_factory.mktemp("digits") / "oof.parquet"
    write_predictions(df, path, task="cls", kind="oof", classes=[str(c) for c in range(10)], metric="accuracy",
                      score=float((probs.argmax(1) == noisy).mean()), target="label")
    return {"path": path, "probs": probs, "noisy": noisy, "flipped": flipped, "ids": ids, "folds": folds}


def test_clean_finds_flipped_labels(digits_oof: dict, tmp_path: Path) -> None:
    out = tmp_path / "issues.parquet"
    r = run_cli("clean", digits_oof["path"], "-o", out, "--json")
    assert r.code == 0, r.stderr
    summary = json.loads(r.stdout)
    issues = read_label_issues(out)
    found = {int(i[6:10]) for i in issues.df["id"]}
    flipped = set(digits_oof["flipped"].tolist())
    recall, precision = len(found & flipped) / len(flipped), len(found & flipped) / len(found)
    print(f"clean on digits with {FLIP:.0%} flipped: recall {recall:.3f}, precision {precision:.3f}")
    assert recall >= 0.7 and precision >= 0.7
    assert summary == {"written": [str(out)], "rows": len(digits_oof["ids"]), "issues": len(found),
                       "filter_by": "prune_by_noise_rate", "by_given_class": summary["by_given_class"]}
    assert sum(summary["by_given_class"].values()) == len(found)


def test_issues_are_cleanlabs_own_with_given_suggested_and_quality(digits_oof: dict, tmp_path: Path) -> None:
    """Not a re-implementation: the rows are cleanlab's find_label_issues, ranked by its label quality scores."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    from kcomp.post.label_issues import clean

    out = tmp_path / "issues.parquet"
    clean(str(digits_oof["path"]), str(out), filter_by="both")  # in-process: the CLI is the test above
    issues = read_label_issues(out)
    probs, noisy = digits_oof["probs"].astype(np.float32).astype(np.float64), digits_oof["noisy"]
    probs = probs / probs.sum(1, keepdims=True)
    expected = np.flatnonzero(find_label_issues(noisy, probs, filter_by="both", n_jobs=1))
    rows = np.array([digits_oof["ids"].index(i) for i in issues.df["id"]])
    assert sorted(rows.tolist()) == expected.tolist()
    quality = get_label_quality_scores(noisy, probs)
    np.testing.assert_allclose(issues.df["quality"], quality[rows], atol=1e-6)
    assert (np.diff(issues.df["quality"].to_numpy()) >= 0).all()  # worst first
    assert (issues.df["given"].to_numpy() == noisy[rows]).all()
    assert (issues.df["suggested"].to_numpy() == probs[rows].argmax(1)).all()
    assert (issues.df["fold"].to_numpy() == digits_oof["folds"][rows]).all()
    assert list(issues.df["given_class"]) == [str(c) for c in noisy[rows]]
    assert issues.meta["classes"] == [str(c) for c in range(10)] and issues.target == "label"
    assert issues.meta["filter_by"] == "both" and issues.meta["rows"] == len(noisy)


def test_clean_refuses_what_it_cannot_use(digits_oof: dict, demo_run: dict[str, Path], tmp_path: Path) -> None:
    seg = tmp_path / "seg.parquet"
    write_predictions(pd.DataFrame({"id": ["a"], "fold": [0], "map_key": ["a"], "map": [np.zeros((1, 4, 4),
                                                                                                   np.uint8)]}),
                      seg, task="seg", kind="oof", classes=["x"])
    one_class = tmp_path / "one_class.parquet"
    write_predictions(pd.DataFrame({"id": ["a", "b"], "fold": [0, 1], "probs": [[0.9, 0.1], [0.8, 0.2]],
                                    "target": [0, 0]}), one_class, task="cls", kind="oof", classes=["x", "y"])
    cases = [
        ((seg,), "holds seg predictions"),
        ((demo_run["test"],), "needs OOF predictions"),
        ((one_class,), "no row has target class 1"),
        ((digits_oof["path"], "--filter-by", "vibes"), "--filter-by vibes"),
        ((digits_oof["path"], "--quality", "vibes"), "--quality vibes"),
        ((tmp_path / "missing.parquet",), "no such file"),
    ]
    for args, message in cases:
        r = run_cli("clean", *args, "-o", tmp_path / "out.parquet")
        assert r.code == 2 and message in r.last_error_line and "Traceback" not in r.stderr, (args, r.stderr)
        assert len([ln for ln in r.stderr.splitlines() if ln.startswith("kcomp:")]) == 1
    r = run_cli("clean", digits_oof["path"], "-o", digits_oof["path"])
    assert r.code == 2 and "is one of the inputs" in r.last_error_line, r.stderr
    assert not (tmp_path / "out.parquet").exists()


@pytest.mark.slow
def test_clean_on_the_demo_with_flipped_labels(tmp_path: Path) -> None:
    """The issue's setting: the demo competition with 20% of its train labels flipped (seeded), OOF from kcomp's own
    training; clean finds >= 70% of the flipped rows with precision >= 0.7."""
    from kcomp.artifacts.index import read_index, write_folds

    data = tmp_path / "data"
    run_chain([("prep", "demo", "-o", data), ("split", data / "index.parquet", "-o", data / "clean_folds.parquet",
                                             "--folds", "4")], cwd=tmp_path)
    table = read_index(data / "clean_folds.parquet")
    train = table.df["split"] == "train"
    noisy, flipped = _flip(table.df.loc[train, "label"].to_numpy(), FLIP, len(table.classes), seed=1)
    table.df.loc[train, "label"] = noisy
    write_folds(table, table.df["fold"], data / "folds.parquet")
    run_chain([("train", "cls", "--folds", data / "folds.parquet", "--fold", "all", "--img-size", "64", "--epochs",
                "6", "--workers", "0", "-o", tmp_path / "run"),
               ("oof", tmp_path / "run", "-o", tmp_path / "oof.parquet", "--workers", "0"),
               ("clean", tmp_path / "oof.parquet", "-o", tmp_path / "issues.parquet")], cwd=tmp_path, timeout=3600)
    ids = table.df.loc[train, "id"].to_numpy()
    found, truth = set(read_label_issues(tmp_path / "issues.parquet").df["id"]), set(ids[flipped])
    recall, precision = len(found & truth) / len(truth), len(found & truth) / max(1, len(found))
    print(f"clean on the demo with {FLIP:.0%} flipped: recall {recall:.3f}, precision {precision:.3f}")
    assert recall >= 0.7 and precision >= 0.7

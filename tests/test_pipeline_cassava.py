"""The issue's acceptance chain on a miniature Cassava download (real names/columns, 800x600 JPEGs), unchanged."""

from __future__ import annotations

import json

import pandas as pd

from tests.conftest import run_chain


def test_cassava_raw_to_submission_beats_majority(cassava_raw, tmp_path):
    d, runs = tmp_path / "d", tmp_path / "runs" / "c"
    steps = [
        ("prep", "cassava", cassava_raw, "-o", d),
        ("split", d / "index.parquet", "-o", d / "folds.parquet", "--folds", "3"),
        ("train", "cls", "--folds", d / "folds.parquet", "--fold", "all", "--model", "resnet18", "--img-size", "64",
         "--epochs", "3", "--batch-size", "16", "--no-pretrained", "-o", runs),
        ("oof", runs, "-o", tmp_path / "oof.parquet", "--json"),
        ("tta", runs, "-o", tmp_path / "pred.parquet"),
        ("submit", "cassava", tmp_path / "pred.parquet", "--sample", cassava_raw / "sample_submission.csv", "-o",
         tmp_path / "sub.csv"),
    ]
    outs = run_chain(steps, tmp_path)
    assert outs["prep"].strip() == str(d / "index.parquet")
    train_csv = pd.read_csv(cassava_raw / "train.csv")
    majority = train_csv["label"].value_counts(normalize=True).max()
    score = json.loads(outs["oof"])["score"]
    assert score > majority + 0.15, (score, majority)

    sub = pd.read_csv(tmp_path / "sub.csv", dtype=str)
    sample = pd.read_csv(cassava_raw / "sample_submission.csv", dtype=str)
    assert list(sub.columns) == ["image_id", "label"]
    assert list(sub["image_id"]) == list(sample["image_id"])
    assert set(sub["label"].astype(int)) <= set(range(5))

"""Happy paths of the commands that read runs and predictions, through the real CLI."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from kcomp.artifacts.predictions import read_predictions
from tests.conftest import run_cli


def test_split_reads_stdin_and_writes_stdout(demo_run, tmp_path):
    r = run_cli("split", "-", "-o", "-", "--folds", "4", "--seed", "7", stdin=demo_run["index"].read_bytes())
    assert r.code == 0, r.stderr
    df = pq.read_table(io.BytesIO(r.raw_stdout)).to_pandas()
    train = df[df["split"] == "train"]
    assert sorted(train["fold"].unique()) == [0, 1, 2, 3]
    assert (df[df["split"] == "test"]["fold"] == -1).all()


def test_oof_scores_and_tta_predicts_every_test_row(demo_run):
    oof = read_predictions(demo_run["oof"], kind="oof")
    folds = pd.read_parquet(demo_run["folds"])
    assert len(oof.df) == int((folds["fold"] >= 0).sum())
    assert 0.0 <= oof.meta["score"] <= 1.0
    np.testing.assert_allclose(oof.probs().sum(1), 1.0, atol=1e-4)
    test = read_predictions(demo_run["test"], kind="test")
    assert sorted(test.df["id"]) == sorted(folds[folds["split"] == "test"]["id"])
    assert test.meta["models"] == 2


def test_tta_accepts_an_index_file_among_runs(demo_run, tmp_path):
    out = tmp_path / "p.parquet"
    r = run_cli("tta", demo_run["run"], demo_run["index"], "-o", out, "--tta", "2", "--workers", "0")
    assert r.code == 0, r.stderr
    p = read_predictions(out)
    assert p.meta["index"] == str(demo_run["index"]) and p.meta["tta"] == 2


def test_ensemble_weights_and_json_summary(demo_run, tmp_path):
    out = tmp_path / "e.parquet"
    r = run_cli("ensemble", demo_run["oof"], demo_run["oof"], "-o", out, "--weights", "1,3", "--json")
    assert r.code == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["written"] == [str(out)]
    assert summary["score"] == read_predictions(demo_run["oof"]).meta["score"]


def test_stack_writes_test_and_oof(demo_run, tmp_path):
    r = run_cli("stack", demo_run["oof"], "--test", demo_run["test"], "-o", tmp_path / "s.parquet",
                "--oof-output", tmp_path / "s_oof.parquet", "--folds", "3", "--json")
    assert r.code == 0, r.stderr
    summary = json.loads(r.stdout)
    assert len(summary["written"]) == 2 and 0 <= summary["cv_score"] <= 1
    assert read_predictions(tmp_path / "s.parquet").kind == "test"
    assert read_predictions(tmp_path / "s_oof.parquet").kind == "oof"


def test_tune_threshold_for_cls_records_argmax(demo_run, tmp_path):
    r = run_cli("tune-threshold", demo_run["oof"], "-o", tmp_path / "t.json")
    assert r.code == 0, r.stderr
    body = json.loads((tmp_path / "t.json").read_text())
    assert body["method"] == "argmax" and body["schema"]["name"] == "thresholds"
    assert body["score"] == read_predictions(demo_run["oof"]).meta["score"]


def test_submit_finds_the_sample_and_keeps_its_order(demo_run, tmp_path):
    r = run_cli("submit", "demo", demo_run["test"], "-o", tmp_path / "sub.csv", "--thresholds",
                tmp_path / "missing.json")
    assert r.code == 2 and "missing.json" in r.last_error_line
    r = run_cli("submit", "demo", demo_run["test"], "-o", tmp_path / "sub.csv")
    assert r.code == 0, r.stderr
    sub = pd.read_csv(tmp_path / "sub.csv", dtype=str)
    sample = pd.read_csv(demo_run["sample"], dtype=str)
    assert list(sub.columns) == list(sample.columns)
    assert list(sub["image_id"]) == list(sample["image_id"])


def test_train_writes_the_run_dir_contract(demo_run):
    run = demo_run["run"]
    assert (run / "config.json").is_file()
    for k in (0, 1):
        for name in ("last.pt", "best.pt", "metrics.parquet", "train.log"):
            assert (run / f"fold{k}" / name).is_file(), name
    metrics = pd.read_parquet(run / "fold0" / "metrics.parquet")
    assert list(metrics["epoch"]) == [1]
    assert {"train_loss", "val_accuracy", "lr", "img_per_s"} <= set(metrics.columns)


def test_stack_takes_several_test_files_after_one_option_and_pairs_them_by_run(demo_run, tmp_path):
    from kcomp.artifacts.predictions import pair_by_runs

    r = run_cli("stack", demo_run["oof"], demo_run["oof"], "--test", demo_run["test"], demo_run["test"],
                "-o", tmp_path / "s.parquet", "--folds", "3")
    assert r.code == 0, r.stderr
    a, b = read_predictions(demo_run["oof"]), read_predictions(demo_run["test"])
    b2 = read_predictions(demo_run["test"])
    b2.meta = {**b2.meta, "runs": ["elsewhere"]}
    a2 = read_predictions(demo_run["oof"])
    a2.meta = {**a2.meta, "runs": ["elsewhere"]}
    _, tests = pair_by_runs([a, a2], [b2, b])
    assert [t.meta["runs"] for t in tests] == [a.meta["runs"], ["elsewhere"]]


def test_oof_best_plus_last_averages_both_checkpoints(demo_run, tmp_path):
    from kcomp.artifacts.predictions import read_predictions

    r = run_cli("oof", demo_run["run"], "--checkpoints", "best+last", "--workers", "0", "-o", tmp_path / "o.parquet")
    assert r.code == 0, r.stderr
    both = read_predictions(tmp_path / "o.parquet")
    assert both.meta["checkpoints"] == "best+last"
    # one epoch: last.pt holds the same weights as best.pt, so the average equals the best-only predictions
    np.testing.assert_allclose(both.probs(), read_predictions(demo_run["oof"]).probs(), atol=1e-5)


def test_oof_rejects_unknown_checkpoints_and_bad_out_size(demo_run, tmp_path):
    r = run_cli("oof", demo_run["run"], "--checkpoints", "worst", "-o", tmp_path / "o.parquet")
    assert r.code == 2 and "--checkpoints worst" in r.last_error_line
    r = run_cli("tta", demo_run["run"], "--out-size", "350by525", "-o", tmp_path / "t.parquet")
    assert r.code == 2 and "HEIGHTxWIDTH" in r.last_error_line

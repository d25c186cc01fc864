"""`kcomp report RUN...` leaderboard: one row per run with the CV per fold, mean and std, training time and the
options in which the runs differ, best first in the metric's direction; in --json, index.html and the terminal."""

from __future__ import annotations

import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from kcomp.artifacts import paths, read_json, read_table, write_json, write_table
from kcomp.artifacts._meta import carried
from tests.conftest import run_chain, run_cli


def _variant(src: Path, dst: Path, options: dict, scores: dict[int, list[float]], metric: str | None = None) -> Path:
    """A copy of a real run with other options in config.json and other validation scores per epoch (the last
    best-flagged epoch being the best; a new metric renames the column)."""
    shutil.copytree(src, dst)
    saved = read_json(paths.config(dst), "run-config")
    body = {k: v for k, v in saved.items() if k not in ("kcomp_version", "schema", "command")}
    body["config"].update(options)
    write_json(paths.config(dst), "run-config", body)
    for fold, values in scores.items():
        df, meta = read_table(paths.metrics(dst, fold), "metrics")
        old = f"val_{meta['metric']}"
        name = metric or meta["metric"]
        row = df.iloc[[0]]
        df = row.loc[row.index.repeat(len(values))].reset_index(drop=True)
        df["epoch"] = np.arange(1, len(values) + 1)
        better = (lambda a, b: a < b) if name == "log_loss" else (lambda a, b: a > b)
        df["best"] = [all(better(v, u) for u in values[:i]) for i, v in enumerate(values)]
        df = df.drop(columns=[old]).assign(**{f"val_{name}": values})
        write_table(df, paths.metrics(dst, fold), "metrics", **{**carried(meta), "metric": name})
    return dst


def _expected(run: Path, metric: str) -> tuple[list[float], float, float, float]:
    """Per-fold best scores straight from metrics.parquet, their mean, std (ddof 1) and the minutes trained."""
    best, seconds = [], 0.0
    for k in paths.trained_folds(run):
        df, _ = read_table(paths.metrics(run, k), "metrics")
        best.append(float(df[df["best"]][f"val_{metric}"].iloc[-1]))
        seconds += float(df["seconds"].sum())
    return best, float(np.mean(best)), float(np.std(best, ddof=1)), seconds / 60


class _Tables(HTMLParser):
    """The text of every table cell, per table."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self.tables[-1][-1].append("")

    def handle_data(self, data: str) -> None:
        if self.tables and self.tables[-1] and self.tables[-1][-1]:
            self.tables[-1][-1][-1] += data


def test_leaderboard_of_three_demo_runs(demo_run: dict[str, Path], tmp_path: Path) -> None:
    a = demo_run["run"]
    b = _variant(a, tmp_path / "lr3e-3", {"lr": 0.003}, {0: [0.30, 0.50], 1: [0.40, 0.35]})
    c = _variant(a, tmp_path / "smooth", {"smoothing": 0.1, "lr": 0.003}, {0: [0.20, 0.25], 1: [0.60, 0.70]})
    out = tmp_path / "report"
    r = run_cli("report", a, b, c, "-o", out, "--json")
    assert r.code == 0, r.stderr
    board = json.loads(r.stdout)["sections"][0]
    assert board["kind"] == "leaderboard" and board["facts"]["differing"] == ["lr", "smoothing"]
    assert board["facts"]["metric"] == "accuracy" and board["facts"]["higher_is_better"] is True
    expected = {}
    for run in (a, b, c):
        expected[run.name] = _expected(run, "accuracy")
    order = sorted(expected, key=lambda n: -expected[n][1])
    assert [row["run"] for row in board["rows"]] == order == ["smooth", "lr3e-3", a.name]
    options = {a.name: (0.001, 0.0), "lr3e-3": (0.003, 0.0), "smooth": (0.003, 0.1)}
    for rank, row in enumerate(board["rows"], start=1):
        best, mean, std, minutes = expected[row["run"]]
        assert row["rank"] == rank and [row["fold0"], row["fold1"]] == pytest.approx(best)
        assert row["mean"] == pytest.approx(mean) and row["std"] == pytest.approx(std)
        assert row["minutes"] == pytest.approx(minutes, abs=0.01)
        assert (row["lr"], row["smoothing"]) == options[row["run"]]
        assert (row["task"], row["model"], row["img_size"], row["epochs"]) == ("cls", "resnet18", 32, 1)
    assert board["rows"][0]["mean"] == pytest.approx(0.475) and board["rows"][0]["std"] == pytest.approx(
        np.std([0.25, 0.70], ddof=1))
    # the page shows the same table first, with the differing options as columns
    parser = _Tables()
    parser.feed((out / "index.html").read_text())
    header, *rows = next([[c.strip() for c in row] for row in t] for t in parser.tables if t and "rank" in t[0])
    assert header[:2] == ["rank", "run"] and header[-2:] == ["lr", "smoothing"]
    assert [row[1] for row in rows] == order


def test_lower_is_better_metrics_rank_ascending_and_the_terminal_shows_the_table(demo_run: dict[str, Path],
                                                                                tmp_path: Path) -> None:
    import io

    from rich.console import Console

    from kcomp.report.build import build_report
    from kcomp.report.terminal import renderables

    runs = [_variant(demo_run["run"], tmp_path / name, {"metric": "log_loss", "mixup": mix}, scores, "log_loss")
            for name, mix, scores in (("runA", 0.0, {0: [1.2], 1: [1.0]}), ("runB", 0.2, {0: [0.8, 0.5],
                                                                                         1: [0.7, 0.9]}))]
    sections, _ = build_report([str(r) for r in runs], tmp_path / "rep", worst=0)
    board = sections[0]
    assert board.facts["higher_is_better"] is False and board.facts["differing"] == ["mixup"]
    assert [row["run"] for row in board.rows] == ["runB", "runA"]  # mean log loss 0.6 < 1.1
    assert board.rows[0]["mean"] == pytest.approx(0.6) and board.rows[0]["fold1"] == pytest.approx(0.7)
    console = Console(record=True, width=200, file=io.StringIO())
    for item in renderables(board):
        console.print(item)
    text = console.export_text()
    assert "leaderboard" in text and text.index("runB") < text.index("runA") and "mixup" in text
    single, _ = build_report([str(runs[0])], tmp_path / "one", worst=0)
    assert [s.kind for s in single] == ["run"]  # a leaderboard compares two or more runs


@pytest.mark.slow
def test_leaderboard_of_three_trained_demo_runs(tmp_path: Path) -> None:
    data = tmp_path / "data"
    steps = [("prep", "demo", "-o", data), ("split", data / "index.parquet", "-o", data / "folds.parquet", "--folds",
                                            "2")]
    base = ("--folds", data / "folds.parquet", "--fold", "all", "--img-size", "32", "--epochs", "1", "--workers",
            "0")
    for name, extra in (("base", ()), ("lr", ("--lr", "0.003")), ("smooth", ("--smoothing", "0.1"))):
        steps.append(("train", "cls", *base, *extra, "-o", tmp_path / name))
    run_chain(steps, cwd=tmp_path)
    r = run_cli("report", *(tmp_path / n for n in ("base", "lr", "smooth")), "-o", tmp_path / "rep", "--json")
    assert r.code == 0, r.stderr
    board = json.loads(r.stdout)["sections"][0]
    assert board["facts"]["differing"] == ["lr", "smoothing"]
    for row in board["rows"]:
        _, mean, std, _ = _expected(tmp_path / row["run"], "accuracy")
        assert row["mean"] == pytest.approx(mean) and row["std"] == pytest.approx(std)
    means = [row["mean"] for row in board["rows"]]
    assert means == sorted(means, reverse=True)


def test_a_run_older_than_an_option_counts_as_what_it_computed() -> None:
    """A config.json without `pretrained` trained from random weights: it differs from a pretrained run and not from
    a --no-pretrained one; other unrecorded options count as their defaults."""
    from kcomp.report.leaderboard import differences

    assert differences([{"pretrained": True}, {}]) == ["pretrained"]
    assert differences([{"pretrained": False, "drop": None}, {}]) == []

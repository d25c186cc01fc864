"""The table of experiments: one row per run with its CV score per fold, mean and std, training time and the options
in which the runs differ (a diff of their config.json), best run first in the metric's own direction."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from kcomp.report.section import Section

SHOWN = ("task", "model", "img_size", "epochs")  # columns of their own, so not repeated among the differences


def leaderboard(runs: list[tuple[Path, Section]]) -> Section:
    """A `leaderboard` section of the runs, given with their report sections (for task, model and metric)."""
    configs = [_config(path) for path, _ in runs]
    differing = differences(configs)
    metrics = list(dict.fromkeys(s.facts.get("metric") for _, s in runs))
    rows = [_row(path, s, cfg, differing) for (path, s), cfg in zip(runs, configs, strict=True)]
    directions = {m: _higher_is_better(m) for m in metrics}
    rows.sort(key=lambda r: (metrics.index(r["metric"]), _sort_value(r["mean"], directions[r["metric"]])))
    for rank, r in enumerate(rows, start=1):
        r["rank"] = rank
    section = Section("leaderboard", f"leaderboard of {len(rows)} runs", ", ".join(str(p) for p, _ in runs))
    section.facts = {"metric": metrics[0] if len(metrics) == 1 else metrics,
                     "higher_is_better": directions[metrics[0]] if len(metrics) == 1 else directions,
                     "runs": len(rows), "differing": differing}
    folds = sorted({k for r in rows for k in r.pop("_folds")})
    section.rows = [{"rank": r["rank"], "run": r["run"], **{k: r[k] for k in SHOWN},
                     **({"metric": r["metric"]} if len(metrics) > 1 else {}),
                     **{f"fold{k}": r["scores"].get(k) for k in folds}, "mean": r["mean"], "std": r["std"],
                     "minutes": r["minutes"], **{k: r["options"].get(k) for k in differing}} for r in rows]
    if len(metrics) > 1:
        section.notes.append(f"the runs score different metrics ({', '.join(map(str, metrics))}): ranked within "
                             "each metric")
    return section


def differences(configs: list[dict[str, Any]]) -> list[str]:
    """The config keys (options that change what a run computes, not how it runs) whose values differ between the
    runs; a key a run does not record counts as what kcomp computed before the option (`_unrecorded`)."""
    from kcomp.runs.config import RUNTIME_KEYS

    before = _unrecorded()
    keys = sorted({k for c in configs for k in c} - RUNTIME_KEYS - set(SHOWN))
    return [k for k in keys if len({repr(c.get(k, before.get(k))) for c in configs}) > 1]


def _unrecorded() -> dict[str, Any]:
    """The value of an option a run predates: its default, or `LEGACY`'s (pretrained: false)."""
    from kcomp.runs.config import DEFAULTS, LEGACY

    return {**DEFAULTS, **LEGACY}


def _config(run: Path) -> dict[str, Any]:
    from kcomp.artifacts.run_config import read_run_config

    return dict(read_run_config(run)["config"])


def _row(run: Path, s: Section, cfg: dict[str, Any], differing: list[str]) -> dict[str, Any]:
    scores, seconds = _fold_scores(run, s.facts.get("metric"))
    values = list(scores.values())
    mean = sum(values) / len(values) if values else None
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else None
    return {"run": run.name, **{k: s.facts.get(k) for k in SHOWN}, "metric": s.facts.get("metric"),
            "scores": scores, "_folds": list(scores), "mean": mean, "std": std,
            "minutes": round(seconds / 60, 2) if seconds is not None else None,
            "options": {k: cfg.get(k, _unrecorded().get(k)) for k in differing}}


def _fold_scores(run: Path, metric: Any) -> tuple[dict[int, float], float | None]:
    """Each trained fold's best validation score (the epoch that wrote best.pt, unrounded) and the seconds all
    folds trained."""
    from kcomp.artifacts import paths, read_table
    from kcomp.report.run import _best_row

    scores, seconds = {}, []
    for k in paths.trained_folds(run):
        if not paths.metrics(run, k).is_file():
            continue
        df, _ = read_table(paths.metrics(run, k), "metrics")
        best = _best_row(df, f"val_{metric}")
        if best is not None:
            scores[k] = float(best[f"val_{metric}"])
        if "seconds" in df.columns:
            seconds.append(float(df["seconds"].sum()))
    return scores, (sum(seconds) if seconds else None)


def _higher_is_better(metric: Any) -> bool:
    """From the metric registry; a metric it does not know (a newer kcomp's) ranks higher first."""
    from kcomp.errors import KcompError
    from kcomp.metrics import get_metric

    try:
        return get_metric(str(metric)).higher_is_better
    except KcompError:
        return True


def _sort_value(mean: float | None, higher_is_better: bool) -> float:
    if mean is None:
        return math.inf  # runs without a score last
    return -mean if higher_is_better else mean

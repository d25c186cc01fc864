"""The names inside a run directory. No other module builds these paths by hand."""

from __future__ import annotations

from pathlib import Path


def config(run: str | Path) -> Path:
    return Path(run) / "config.json"


def fold_dir(run: str | Path, fold: int) -> Path:
    return Path(run) / f"fold{fold}"


def last_checkpoint(run: str | Path, fold: int) -> Path:
    return fold_dir(run, fold) / "last.pt"


def best_checkpoint(run: str | Path, fold: int) -> Path:
    return fold_dir(run, fold) / "best.pt"


def metrics(run: str | Path, fold: int) -> Path:
    return fold_dir(run, fold) / "metrics.parquet"


def train_log(run: str | Path, fold: int) -> Path:
    return fold_dir(run, fold) / "train.log"


def trained_folds(run: str | Path) -> list[int]:
    """Folds of a run that have a best checkpoint, in order."""
    folds = []
    for d in Path(run).glob("fold*"):
        suffix = d.name[4:]
        if suffix.isdigit() and (d / "best.pt").is_file():
            folds.append(int(suffix))
    return sorted(folds)

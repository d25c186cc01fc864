"""A run directory: per-epoch training curves of every fold (loss, validation metric, learning rate)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kcomp.errors import BadInput
from kcomp.report import _plot
from kcomp.report.section import Image, Section


def report_run(run: Path, out_dir: Path, prefix: str) -> Section:
    from kcomp.artifacts import paths, read_table
    from kcomp.artifacts.run_config import read_run_config

    saved = read_run_config(run)
    cfg, setup = saved["config"], saved["setup"]
    folds = paths.trained_folds(run)
    if not folds:
        raise BadInput("no trained fold yet (no foldK/best.pt)", path=run)
    history: dict[int, Any] = {}
    section = Section("run", f"run {run.name}", str(run))
    metric = None
    for k in folds:
        if paths.metrics(run, k).is_file():
            history[k], meta = read_table(paths.metrics(run, k), "metrics")
            _check_metrics(history[k], paths.metrics(run, k))
            metric = metric or meta.get("metric")
        else:
            section.notes.append(f"fold {k} has best.pt but no metrics.parquet; left out of the curves")
    if not history:
        raise BadInput("no fold has a metrics.parquet", path=run)
    metric = metric or _metric_column(next(iter(history.values())))
    section.facts.update(task=cfg.get("task"), model=cfg.get("model"), epochs=cfg.get("epochs"),
                         img_size=cfg.get("img_size"), classes=len(setup.get("classes", [])) or None,
                         folds=sorted(history), metric=metric)
    col = f"val_{metric}"
    bests = []
    for k, df in history.items():
        best = _best_row(df, col)
        bests.append(best[col] if best is not None else None)
        section.rows.append({
            "fold": k, "epochs": int(df["epoch"].max()) if len(df) else 0,
            "best_epoch": int(best["epoch"]) if best is not None else None,
            "best_score": _num(best[col]) if best is not None else None,
            "last_train_loss": _num(df["train_loss"].iloc[-1]) if len(df) else None,
            "img_per_s": _num(df["img_per_s"].mean(), 1) if "img_per_s" in df and len(df) else None,
            "minutes": _num(df["seconds"].sum() / 60, 2) if "seconds" in df and len(df) else None})
    scores = [float(b) for b in bests if b is not None]
    section.facts["mean_best_score"] = _num(sum(scores) / len(scores)) if scores else None
    curves = (("train_loss", "training loss", "loss"), (col, col, "metric"), ("lr", "learning rate", "lr"))
    for column, label, name in curves:
        path = out_dir / f"{prefix}{name}.png"
        if _plot_curve(history, column, label + (" (* = best epoch)" if column == col else ""), path, col):
            section.images.append(Image(path.name, f"{label} per epoch, one line per fold"))
    return section


def _plot_curve(history: dict[int, Any], column: str, ylabel: str, path: Path, metric_col: str) -> bool:
    if not any(column in df.columns and len(df) for df in history.values()):
        return False
    fig, (ax,) = _plot.figure()
    for k, df in history.items():
        if column not in df.columns or not len(df):
            continue
        (line,) = ax.plot(df["epoch"], df[column], marker="o", markersize=3, label=f"fold {k}")
        if column == metric_col and "best" in df.columns:
            best = df[df["best"].astype(bool)]
            if len(best):
                last = best.iloc[-1]
                ax.plot([last["epoch"]], [last[column]], marker="*", markersize=14, color=line.get_color())
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    if column == "lr":
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    _plot.save(fig, path)
    return True


def _check_metrics(df: Any, where: Path) -> None:
    """The columns the curves and the table read: present, and numbers (a hand-edited file is one line)."""
    import pandas as pd

    from kcomp.artifacts import require_columns

    require_columns(df, ["epoch", "train_loss"], where)
    for col in df.columns:
        if (col in ("epoch", "step", "lr", "train_loss", "seconds", "img_per_s") or str(col).startswith("val_")) \
                and not (pd.api.types.is_numeric_dtype(df[col]) and not pd.api.types.is_bool_dtype(df[col])):
            raise BadInput(f"column {col} holds {df[col].iloc[0]!r:.30} ({df[col].dtype}), expected numbers",
                           path=where)


def _metric_column(df: Any) -> str:
    cols = [c for c in df.columns if str(c).startswith("val_")]
    return cols[0][4:] if cols else "metric"


def _best_row(df: Any, col: str) -> Any:
    """The epoch that wrote best.pt: the last row flagged `best` (each flag marks a new best)."""
    if col not in df.columns or not len(df):
        return None
    flagged = df[df["best"].astype(bool)] if "best" in df.columns else df.iloc[0:0]
    return flagged.iloc[-1] if len(flagged) else None


def _num(v: Any, digits: int = 6) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return round(f, digits) if f == f else None

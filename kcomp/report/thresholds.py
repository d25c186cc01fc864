"""A thresholds file: the score of every threshold tried (one curve per class) with the chosen one marked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kcomp.report import _plot
from kcomp.report.section import Image, Section


def report_thresholds(path: str, out_dir: Path, prefix: str) -> Section:
    from kcomp.artifacts.thresholds import read_thresholds

    body = read_thresholds(path)
    section = Section("thresholds", f"thresholds {Path(path).name} ({body.get('task')})", str(path))
    section.facts = {k: body[k] for k in ("task", "method", "metric", "score", "oof", "downscale", "size")
                     if body.get(k) is not None}
    curves: dict[str, list[tuple[float, float]]] = {}
    chosen: dict[str, float] = {}
    classes = body.get("classes") or {}
    for name, choice in classes.items():
        if not isinstance(choice, dict):  # cls / det: nothing was tuned for this class
            continue
        section.rows.append({"class": name, **{k: v for k, v in choice.items() if k != "curve"}})
        if choice.get("curve"):
            curves[name] = _points(choice["curve"])
        if choice.get("threshold") is not None:
            chosen[name] = float(choice["threshold"])
    if not curves and body.get("curve"):  # ink: one curve for the whole map, at the top level
        name = next(iter(classes), "all")
        curves[name] = _points(body["curve"])
        if body.get("threshold") is not None:
            chosen[name] = float(body["threshold"])
    if body.get("note"):
        section.notes.append(body["note"])
    if not curves and not body.get("note"):
        section.notes.append(f"method {body.get('method')!r} tunes no threshold, so there is no curve to draw")
    if not curves:
        return section
    out = out_dir / f"{prefix}threshold_curves.png"
    _plot_curves(curves, chosen, body.get("metric") or "score", out,
                 downscaled=body.get("task") == "ink" and body.get("downscale"))
    section.images.append(Image(out.name, "score at each threshold (best over the other parameters per point); "
                                          "dot = the chosen threshold"))
    return section


def _points(curve: list[Any]) -> list[tuple[float, float]]:
    """Curves are lists of [threshold, score] pairs (ink) or of {threshold, score, ...} dicts (seg)."""
    pts = []
    for p in curve:
        t, s = (p["threshold"], p["score"]) if isinstance(p, dict) else (p[0], p[1])
        if s is not None:  # an undefined score (written as null) has no point to draw
            pts.append((float(t), float(s)))
    return sorted(pts)


def _plot_curves(curves: dict[str, list[tuple[float, float]]], chosen: dict[str, float], metric: str, path: Path,
                 downscaled: Any) -> None:
    fig, (ax,) = _plot.figure()
    for name, pts in curves.items():
        ts, ss = zip(*pts, strict=True)
        (line,) = ax.plot(ts, ss, marker="." if len(pts) <= 50 else None, label=name)
        if name in chosen:
            t = chosen[name]
            s = min(pts, key=lambda p: abs(p[0] - t))[1]
            ax.plot([t], [s], "o", markersize=8, color=line.get_color())
            ax.annotate(f"{t:.3g}", (t, s), textcoords="offset points", xytext=(5, 5), fontsize="small",
                        color=line.get_color())
    ax.set_xlabel("threshold")
    ax.set_ylabel(metric + (f" (maps downscaled x{downscaled})" if downscaled else ""))
    ax.set_xlim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    _plot.save(fig, path)

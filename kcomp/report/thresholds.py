"""A thresholds file: the score of every threshold tried (one curve per class) with the chosen one marked, and where
the file has held-out scores, the in-sample and held-out score of every min size drawn together beside it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kcomp.report import _plot
from kcomp.report.section import Image, Section

_FACTS = ("task", "method", "metric", "score", "oof", "downscale", "size", "rule")


def report_thresholds(path: str, out_dir: Path, prefix: str) -> Section:
    from kcomp.artifacts.thresholds import read_thresholds

    body = read_thresholds(path)
    section = Section("thresholds", f"thresholds {Path(path).name} ({body.get('task')})", str(path))
    section.facts = {k: body[k] for k in _FACTS if body.get(k) is not None}
    if isinstance(body.get("heldout"), dict):
        section.facts.update(heldout=body["heldout"].get("score"), heldout_std=body["heldout"].get("std"))
    curves: dict[str, list[tuple[float, float]]] = {}
    chosen: dict[str, float] = {}
    options: dict[str, tuple[list[dict], Any, Any]] = {}  # class -> (options, chosen, in-sample-alone min size)
    classes = body.get("classes") or {}
    for name, choice in classes.items():
        if not isinstance(choice, dict):  # cls / det: nothing was tuned for this class
            continue
        section.rows.append({"class": name, **_row(choice)})
        if choice.get("curve"):
            curves[name] = _points(choice["curve"])
        if choice.get("threshold") is not None:
            chosen[name] = float(choice["threshold"])
        if _has_heldout(choice.get("options")):
            top = choice.get("top", 0.0)
            options[name] = ([o for o in choice["options"] if o.get("top", 0.0) == top], choice.get("min_size"),
                             _in_sample_size(choice, top))
    if not curves and body.get("curve"):  # ink: one curve for the whole map, at the top level
        name = next(iter(classes), "all")
        curves[name] = _points(body["curve"])
        if body.get("threshold") is not None:
            chosen[name] = float(body["threshold"])
        if _has_heldout(body.get("options")):
            options[name] = (body["options"], body.get("min_size"), _in_sample_size(body, 0.0))
    if body.get("note"):
        section.notes.append(body["note"])
    section.notes += [str(w) for w in body.get("warnings") or []]
    if not curves and not body.get("note"):
        section.notes.append(f"method {body.get('method')!r} tunes no threshold, so there is no curve to draw")
    if not curves:
        return section
    out = out_dir / f"{prefix}threshold_curves.png"
    _plot_curves(curves, chosen, options, body.get("metric") or "score", out,
                 downscaled=body.get("task") == "ink" and body.get("downscale"))
    caption = "score at each threshold (best over the other parameters per point); dot = the chosen threshold"
    if options:
        caption += ("; right: score at each min size (threshold re-tuned per point), in-sample (solid) and held-out "
                    "(dashed, mean ± SE over folds, each fold scored at the threshold tuned without it); dot = the "
                    "chosen min size, x = the one in-sample tuning alone picks")
    section.images.append(Image(out.name, caption))
    return section


def _row(choice: dict[str, Any]) -> dict[str, Any]:
    """A class's chosen values for the table: its scalars, plus the held-out mean and std where there is one."""
    row = {k: v for k, v in choice.items() if not isinstance(v, dict | list)}
    held = choice.get("heldout")
    if isinstance(held, dict):
        row.update(heldout=held.get("score"), heldout_std=held.get("std"))
    return row


def _in_sample_size(choice: dict[str, Any], top: Any) -> Any:
    """The min size in-sample tuning alone picks, when it lies on the drawn curves (the same top)."""
    alone = choice.get("in_sample_choice")
    return alone.get("min_size") if isinstance(alone, dict) and alone.get("top", 0.0) == top else None


def _has_heldout(options: Any) -> bool:
    return isinstance(options, list) and any(isinstance(o, dict) and o.get("heldout") is not None for o in options)


def _points(curve: list[Any]) -> list[tuple[float, float]]:
    """Curves are lists of [threshold, score] pairs (ink) or of {threshold, score, ...} dicts (seg)."""
    pts = []
    for p in curve:
        t, s = (p["threshold"], p["score"]) if isinstance(p, dict) else (p[0], p[1])
        if s is not None:  # an undefined score (written as null) has no point to draw
            pts.append((float(t), float(s)))
    return sorted(pts)


def _plot_curves(curves: dict[str, list[tuple[float, float]]], chosen: dict[str, float],
                 options: dict[str, tuple[list[dict], Any, Any]], metric: str, path: Path, downscaled: Any) -> None:
    fig, axes = _plot.figure(1, 2 if options else 1)
    ax = axes[0]
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
    if options:
        _plot_options(axes[1], options, metric)
    _plot.save(fig, path)


def _plot_options(ax: Any, options: dict[str, tuple[list[dict], Any, Any]], metric: str) -> None:
    """In-sample (solid) and held-out (dashed, ± SE) score per min size, one colour per class; dot = the chosen
    min size (held-out), x = the in-sample-alone one (in-sample)."""
    smallest = 1.0
    for i, (name, (opts, min_size, alone)) in enumerate(options.items()):
        opts = sorted(opts, key=lambda o: o["min_size"])
        xs = [float(o["min_size"]) for o in opts]
        colour = f"C{i}"
        ax.plot(xs, [o["in_sample"] for o in opts], "-", marker=".", color=colour, label=name)
        ax.errorbar(xs, [o["heldout"] for o in opts], yerr=[o.get("heldout_se") or 0.0 for o in opts], fmt="--",
                    marker=".", capsize=2, color=colour)
        for o in opts:
            if o["min_size"] == min_size:
                ax.plot([float(min_size)], [o["heldout"]], "o", markersize=8, color=colour)
            if o["min_size"] == alone:
                ax.plot([float(alone)], [o["in_sample"]], "x", markersize=9, mew=2, color=colour)
        smallest = min([smallest, *(x for x in xs if x > 0)])
    ax.set_xscale("symlog", linthresh=smallest)
    ax.set_xlabel("min size (px)")
    ax.set_ylabel(metric)
    ax.set_title("solid: in-sample, dashed: held-out (± SE)", fontsize="small")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="small")

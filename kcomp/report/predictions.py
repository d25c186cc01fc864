"""A predictions file: cls -> class-probability histograms (+ confusion matrix for OOF with targets);
seg/ink -> overlay previews (`kcomp.report.preview`, at a thresholds file's settings when one is given, with the
truth for OOF); det -> boxes drawn over a few images. OOF predictions also get their worst rows (`worst`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kcomp.errors import BadInput
from kcomp.report import _plot
from kcomp.report.section import Image, Section

if TYPE_CHECKING:
    from kcomp.artifacts.boxes import Boxes
    from kcomp.artifacts.predictions import Predictions

SMALL_MULTIPLES = 8  # up to this many classes get one histogram panel each
BOX_MIN_SCORE = 0.1  # predicted boxes drawn: at least this score ...
BOX_MAX = 20  # ... and at most this many per image, best first
BOX_SIDE = 800  # previews are scaled so the longer side is at most this
PRED_RGB, TRUTH_RGB = (255, 64, 64), (64, 220, 64)


def report_predictions(path: str, out_dir: Path, prefix: str, n_previews: int, *, worst: int = 0,
                       tuned: dict[str, list[tuple[str, dict]]] | None = None) -> list[Section]:
    """The predictions' section, then (OOF, `worst` > 0) the gallery of its worst rows. seg/ink are drawn at the
    settings of the thresholds file among `tuned` (task -> [(path, body)]) that was tuned on this file, else of
    the only one of its task."""
    from kcomp.artifacts.predictions import read_predictions

    preds = read_predictions(path)
    meta = preds.meta
    section = Section("predictions", f"{meta.get('kind')} predictions {Path(path).name} ({preds.task})", str(path))
    section.facts.update(task=preds.task, kind=preds.kind, rows=len(preds.df), classes=preds.classes or None,
                         metric=meta.get("metric"), score=meta.get("score"), runs=meta.get("runs"))
    section.facts = {k: v for k, v in section.facts.items() if v is not None}
    thr_path, thresholds = _paired(preds, (tuned or {}).get(preds.task, []))
    if preds.task == "cls":
        _cls(preds, out_dir, prefix, section)
    elif preds.task == "det":
        _det(preds, out_dir, prefix, section, n_previews)
    elif preds.task in ("seg", "ink") and n_previews:
        from kcomp.report.preview import write_previews

        sub = out_dir / f"{prefix}previews"
        for p in write_previews(preds, sub, n=n_previews, thresholds=thresholds):
            section.images.append(Image(f"{sub.name}/{Path(p).name}", f"{preds.task} overlay: {Path(p).stem}"))
    elif preds.task not in ("seg", "ink"):
        section.notes.append(f"no pictures for task {preds.task!r}")
    if preds.task in ("seg", "ink"):
        several = len((tuned or {}).get(preds.task, [])) > 1
        section.notes.append(f"masks drawn at the settings of {thr_path}" if thr_path else
                             "masks drawn at probability 0.5: " + ("none of the thresholds files among the inputs "
                                                                  "was tuned on this file" if several else
                                                                  "give the thresholds file among the inputs to "
                                                                  "draw them at its settings"))
    if worst and preds.kind == "oof":
        from kcomp.report.worst import report_worst

        return [section, report_worst(preds, out_dir, prefix, worst, thresholds)]
    return [section]


def _paired(preds: Predictions, candidates: list[tuple[str, dict]]) -> tuple[str | None, dict | None]:
    """The thresholds file tuned on these predictions (its `oof` is this file), else the only one of the task."""
    here = Path(preds.source).resolve()
    for path, body in candidates:
        if body.get("oof") and Path(str(body["oof"])).resolve() == here:
            return path, body
    return candidates[0] if len(candidates) == 1 else (None, None)


# --------------------------------------------------------------------------------------------------------- cls

def _cls(preds: Predictions, out_dir: Path, prefix: str, section: Section) -> None:
    probs = preds.probs()
    classes = preds.classes or [str(c) for c in range(probs.shape[1])]
    top = probs.argmax(1)
    target = preds.df["target"].to_numpy(np.int64) if "target" in preds.df.columns else None
    if target is not None and (target.min(initial=0) < 0 or target.max(initial=0) >= len(classes)):
        raise BadInput(f"target values outside 0..{len(classes) - 1}", path=preds.source)
    for c, name in enumerate(classes):
        row: dict[str, Any] = {"class": name, "predicted": int((top == c).sum()),
                               "mean_prob": round(float(probs[:, c].mean()), 4)}
        if target is not None:
            true = target == c
            row["true"] = int(true.sum())
            row["recall"] = round(float((top[true] == c).mean()), 4) if true.any() else None
            row["precision"] = round(float((target[top == c] == c).mean()), 4) if (top == c).any() else None
        section.rows.append(row)
    path = out_dir / f"{prefix}probs.png"
    section.images.append(Image(path.name, _prob_histogram(probs, target, classes, path)))
    if target is None:
        section.notes.append("no target column (test predictions): no confusion matrix")
        return
    path = out_dir / f"{prefix}confusion.png"
    _confusion(target, top, classes, path)
    section.images.append(Image(path.name, "confusion matrix of the argmax class (rows: truth; colour: row share)"))


def _prob_histogram(probs: np.ndarray, target: np.ndarray | None, classes: list[str], path: Path) -> str:
    """One panel per class (up to SMALL_MULTIPLES classes): p(class) over the rows of that class and of the
    others when targets are known; beyond that, one panel of the top probability. Returns the caption."""
    bins = np.linspace(0, 1, 21)
    k = len(classes)
    if k > SMALL_MULTIPLES:
        fig, (ax,) = _plot.figure()
        top = probs.max(1)
        if target is None:
            ax.hist(top, bins=bins)
        else:
            right = probs.argmax(1) == target
            ax.hist([top[right], top[~right]], bins=bins, stacked=True, label=["argmax right", "argmax wrong"])
            ax.legend(fontsize="small")
        ax.set(xlabel="highest class probability", ylabel="rows")
        _plot.save(fig, path)
        return "distribution of the highest class probability" + (" (right/wrong argmax)" if target is not None
                                                                   else "")
    ncols = {4: 2, 5: 3, 6: 3}.get(k, min(k, 4))
    fig, axes = _plot.figure(-(-k // ncols), ncols)
    for c, ax in enumerate(axes):
        if c >= k:
            ax.set_axis_off()
            continue
        if target is None:
            ax.hist(probs[:, c], bins=bins, color="tab:blue")
        else:
            ax.hist(probs[target != c, c], bins=bins, color="lightgray", label="other classes")
            ax.hist(probs[target == c, c], bins=bins, histtype="step", linewidth=1.8, color="tab:green",
                    label="this class")
        ax.set_title(classes[c], fontsize="small")
        ax.set_xlim(0, 1)
        ax.tick_params(labelsize="x-small")
    axes[0].set_ylabel("rows", fontsize="small")
    if target is not None:
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncols=2, fontsize="small")
    _plot.save(fig, path)
    return ("p(class) per class: rows of that class (green) vs the others (grey)" if target is not None
            else "p(class) per class over all rows")


def _confusion(target: np.ndarray, pred: np.ndarray, classes: list[str], path: Path) -> None:
    k = len(classes)
    counts = np.bincount(target * k + pred, minlength=k * k).reshape(k, k)
    share = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    fig, (ax,) = _plot.figure()
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    if k <= 20:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=9 if k <= 10 else 6,
                        color="white" if share[i, j] > 0.5 else "black")
    ticks = list(range(k))
    ax.set_xticks(ticks, classes, rotation=30 if k > 4 else 0, ha="right" if k > 4 else "center", fontsize="small")
    ax.set_yticks(ticks, classes, fontsize="small")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.colorbar(im, ax=ax, label="share of the true class")
    _plot.save(fig, path)


# --------------------------------------------------------------------------------------------------------- det

def _det(preds: Predictions, out_dir: Path, prefix: str, section: Section, n: int) -> None:
    df, boxes = preds.df, preds.boxes
    counts, scores = boxes.counts(), boxes.score
    section.rows.append({"images": len(df), "boxes": int(counts.sum()),
                         "images_with_boxes": int((counts > 0).sum()),
                         f"boxes_score_ge_{BOX_MIN_SCORE}": int((scores >= BOX_MIN_SCORE).sum())})
    if len(scores):
        path = out_dir / f"{prefix}box_scores.png"
        fig, (ax,) = _plot.figure()
        ax.hist(scores, bins=np.linspace(0, 1, 41))
        ax.set_xlabel("box score")
        ax.set_ylabel("boxes")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        _plot.save(fig, path)
        section.images.append(Image(path.name, "distribution of box scores"))
    if not preds.meta.get("index"):
        section.notes.append("the predictions name no index: no box previews")
        return
    table = preds.index("needed to find the images")
    by_id = table.df.set_index("id")
    # images with predicted boxes first (file order otherwise), so previews show something
    order = sorted(range(len(df)), key=lambda i: counts[i] == 0)[:n]
    sub = out_dir / f"{prefix}boxes"
    for i in order:
        rid = df["id"].iloc[i]
        if rid not in by_id.index:
            raise BadInput(f"id {rid!r} is not in the index {table.source}", path=preds.source)
        row = by_id.loc[rid]
        truth = row["boxes"] if "boxes" in by_id.columns and preds.kind == "oof" else None
        img = _draw_boxes(table.file(row["path"]), boxes.image(i), truth, int(df["height"].iloc[i]),
                          int(df["width"].iloc[i]), preds.classes)
        path = sub / f"{_plot.slug(rid)}.png"
        _write_png(path, img)
        what = "predicted (red" + (f", score >= {BOX_MIN_SCORE}) and true (green)" if truth is not None else
                                   f", score >= {BOX_MIN_SCORE})")
        section.images.append(Image(f"{sub.name}/{path.name}", f"{rid}: {what} boxes"))


def _draw_boxes(image: Path, boxes: Boxes, truth: Any, height: int, width: int, classes: list[str]) -> np.ndarray:
    """The image (possibly a smaller cached copy) with one image's predicted `boxes` and its true boxes (index
    records), both in ORIGINAL pixels (height x width), scaled onto it, then the whole scaled to at most BOX_SIDE
    px."""
    import cv2

    from kcomp.data.images import read_rgb

    img = read_rgb(image)
    f = min(1.0, BOX_SIDE / max(img.shape[:2]))
    if f < 1:
        img = cv2.resize(img, (round(img.shape[1] * f), round(img.shape[0] * f)), interpolation=cv2.INTER_AREA)
    img = np.ascontiguousarray(img)
    sx, sy = img.shape[1] / max(width, 1), img.shape[0] / max(height, 1)
    thick = max(1, round(max(img.shape[:2]) / 300))
    scale = max(0.4, max(img.shape[:2]) / 1200)

    def rect(xyxy: Any, colour: tuple[int, int, int]) -> tuple[int, int]:
        x1, y1, x2, y2 = (float(v) for v in xyxy)
        p1 = (round(x1 * sx), round(y1 * sy))
        cv2.rectangle(img, p1, (round(x2 * sx), round(y2 * sy)), colour, thick)
        return p1

    for b in truth if truth is not None else []:
        rect([b["x1"], b["y1"], b["x2"], b["y2"]], TRUTH_RGB)
    shown = np.flatnonzero(boxes.score >= BOX_MIN_SCORE)
    for k in shown[np.argsort(-boxes.score[shown], kind="stable")][:BOX_MAX]:
        x, y = rect(boxes.xyxy[k], PRED_RGB)
        cv2.putText(img, f"{_label(boxes.label[k], classes)} {boxes.score[k]:.2f}", (x + 2, max(y - 4, 10)),
                    cv2.FONT_HERSHEY_SIMPLEX, scale, PRED_RGB, max(1, thick // 2), cv2.LINE_AA)
    return img


def _label(label: Any, classes: list[str]) -> str:
    """Box labels are class indices in prediction files; show the class name when there is one."""
    try:
        k = int(label)
    except (TypeError, ValueError):
        return str(label)
    return classes[k] if 0 <= k < len(classes) else str(k)


def _write_png(path: Path, rgb: np.ndarray) -> None:
    import cv2

    from kcomp.artifacts import atomic_write_bytes

    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise BadInput("could not encode the preview PNG", path=path)
    atomic_write_bytes(path, buf.tobytes())

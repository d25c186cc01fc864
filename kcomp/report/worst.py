"""Where a model is wrong: every OOF row's own score, and a gallery of the k rows scoring lowest.

Per row: cls the probability of the true class (lowest = the most confident mistakes); seg the mean Dice over
classes and ink the F0.5 inside the papyrus mask, both after the thresholds file's post-processing (0.5 without
one), as `submit` would binarise; det minus the number of true boxes no predicted box (score >= 0.1, same label)
overlaps at IoU > 0.5, so the rows missing the most boxes come first.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kcomp.errors import BadInput
from kcomp.report import _plot
from kcomp.report.section import Image, Section

if TYPE_CHECKING:
    import pandas as pd

    from kcomp.artifacts.predictions import Predictions

DET_MIN_SCORE = 0.1  # the boxes the det previews draw
DET_IOU = 0.5
THUMB_SIDE = 256
SCORE_MEANING = {"cls": "p(true class)", "seg": "mean Dice over classes", "ink": "F0.5 inside the mask",
                 "det": "minus the true boxes missed"}


def row_scores(preds: Predictions, thresholds: dict[str, Any] | None = None) -> pd.DataFrame:
    """One row per OOF row, in file order: `id`, `fold`, `score` and what explains it (cls: `true`, `predicted`,
    `p_predicted`; seg: `dice_<class>`; det: `missed`, `true_boxes`)."""
    import pandas as pd

    if preds.kind != "oof":
        raise BadInput("row scores need OOF predictions (the truth)", path=preds.source)
    extra = {"cls": _cls, "seg": _seg, "ink": _ink, "det": _det}[preds.task](preds, thresholds)
    folds = preds.df["fold"].to_numpy() if "fold" in preds.df.columns else np.full(len(preds.df), -1)
    return pd.DataFrame({"id": preds.df["id"].to_numpy(), "fold": folds, **extra})


def worst(scores: pd.DataFrame, k: int) -> pd.DataFrame:
    """The k rows with the lowest score (ties in file order)."""
    return scores.iloc[np.argsort(scores["score"].to_numpy(), kind="stable")[:k]].reset_index(drop=True)


def _cls(preds: Predictions, thresholds: Any) -> dict[str, Any]:
    probs = preds.probs()
    if "target" not in preds.df.columns:
        raise BadInput("OOF predictions have no target column", path=preds.source)
    target = preds.df["target"].to_numpy(np.int64)
    names = preds.classes or [str(c) for c in range(probs.shape[1])]
    top = probs.argmax(1)
    return {"score": probs[np.arange(len(target)), target].astype(np.float64), "true": [names[t] for t in target],
            "predicted": [names[t] for t in top], "p_predicted": probs.max(1).astype(np.float64)}


def _seg(preds: Predictions, thresholds: Any) -> dict[str, Any]:
    from kcomp.metrics._segmentation import dice_empty_one
    from kcomp.post.seg_threshold import postprocess
    from kcomp.post.tuned import seg_settings
    from kcomp.tasks import get_task
    from kcomp.tasks.seg import truth_masks

    table = preds.index("needed for the true masks")
    setup = get_task("seg").setup(table)
    by_id = table.df.set_index("id", drop=False)
    dice = np.zeros((len(preds.df), len(preds.classes)))
    by_size: dict[tuple[int, ...], Any] = {}
    with preds.maps() as maps:
        for i, (rid, key) in enumerate(zip(preds.df["id"], preds.df["map_key"].astype(str), strict=True)):
            m = maps[key]
            if thresholds and m.shape[1:] not in by_size:
                by_size[m.shape[1:]] = seg_settings(thresholds, preds.classes, m.shape[1:])
            settings = by_size.get(m.shape[1:])
            truth = truth_masks(by_id.loc[rid], setup, m.shape[1:])
            for c, name in enumerate(preds.classes):
                pred = postprocess(m[c], *settings[name]) if settings else m[c] >= 128
                dice[i, c] = dice_empty_one(pred, truth[c])
    return {"score": dice.mean(1), **{f"dice_{name}": dice[:, c] for c, name in enumerate(preds.classes)}}


def _ink(preds: Predictions, thresholds: Any) -> dict[str, Any]:
    from kcomp.data.layers import read_png_mask
    from kcomp.metrics._segmentation import fbeta_pixels
    from kcomp.post.ink_threshold import postprocess
    from kcomp.post.tuned import ink_settings

    table = preds.index("needed for the true ink")
    by_id = table.df.set_index("id", drop=False)
    thr, min_size = ink_settings(thresholds)
    out = []
    with preds.maps() as maps:
        for rid, key in zip(preds.df["id"], preds.df["map_key"].astype(str), strict=True):
            row = by_id.loc[rid]
            h, w, y0, y1 = (int(row[c]) for c in ("height", "width", "y0", "y1"))
            mask = read_png_mask(table.file(row["mask"]), (h, w))[y0:y1]
            truth = read_png_mask(table.file(row["inklabels"]), (h, w))[y0:y1] if row["inklabels"] else \
                np.zeros_like(mask)
            out.append(fbeta_pixels(postprocess(maps[key], mask, thr, min_size), truth, mask))
    return {"score": np.asarray(out, np.float64)}


def _det(preds: Predictions, thresholds: Any) -> dict[str, Any]:
    from kcomp.metrics._detection import _iou
    from kcomp.tasks._pseudo_labels import det_boxes
    from kcomp.tasks.det import DetTask

    table = preds.index("needed for the true boxes")
    classes = table.classes or preds.classes
    rows = table.df.set_index("id").loc[preds.df["id"]].reset_index()
    truths = DetTask().truth(rows, {"classes": list(classes)})
    missed = []
    for p, t in zip(det_boxes(preds), truths, strict=True):
        p = p[p[:, 4] >= DET_MIN_SCORE]
        if len(t) == 0 or len(p) == 0:
            missed.append(len(t))
            continue
        hit = (_iou(t[:, :4], p[:, :4]) > DET_IOU) & (t[:, None, 4] == p[None, :, 5])
        missed.append(int((~hit.any(1)).sum()))
    return {"score": -np.asarray(missed, np.float64), "missed": missed, "true_boxes": [len(t) for t in truths]}


# ------------------------------------------------------------------------------------------------------- gallery

def report_worst(preds: Predictions, out_dir: Path, prefix: str, k: int, thresholds: dict[str, Any] | None
                 ) -> Section:
    """A section listing the k lowest-scoring OOF rows, each drawn (cls: the image; seg/ink: the overlay with the
    truth; det: true and predicted boxes)."""
    name = Path(preds.source).name
    if not preds.meta.get("index") and preds.task != "cls":
        section = Section("worst", f"worst rows of {name}", preds.source)
        section.notes.append("the predictions name no index, which holds the truth: no per-row scores")
        return section
    scores = row_scores(preds, thresholds)
    rows = worst(scores, k)
    section = Section("worst", f"worst {len(rows)} rows of {name} (lowest {SCORE_MEANING[preds.task]})",
                      preds.source)
    section.facts = {"task": preds.task, "score": SCORE_MEANING[preds.task], "rows": len(scores),
                     "mean_score": float(scores["score"].mean()) if len(scores) else None}
    section.rows = [{"rank": r + 1, **{c: _plain(v) for c, v in row.items()}} for r, row in
                    enumerate(rows.to_dict("records"))]
    if not preds.meta.get("index"):
        section.notes.append("the predictions name no index: no pictures of the rows")
        return section
    sub = out_dir / f"{prefix}worst"
    for path, caption in _draw(preds, rows, sub, thresholds):
        section.images.append(Image(f"{sub.name}/{Path(path).name}", caption))
    return section


def _draw(preds: Predictions, rows: pd.DataFrame, sub: Path, thresholds: Any) -> list[tuple[str, str]]:
    if not len(rows):
        return []
    ids = rows["id"].tolist()
    if preds.task in ("seg", "ink"):
        from kcomp.report.preview import write_previews

        written = write_previews(preds, sub, n=len(ids), thresholds=thresholds, ids=ids)
        return [(p, f"{rank}. {i}: score {s:.3f}") for rank, (p, i, s) in
                enumerate(zip(written, ids, rows["score"], strict=True), start=1)]
    table = preds.index("needed to find the images")
    by_id = table.df.set_index("id")
    out = []
    for rank, row in enumerate(rows.to_dict("records"), start=1):
        path = sub / f"{rank:02d}_{_plot.slug(row['id'])}.png"
        if preds.task == "cls":
            _thumbnail(table.file(by_id.loc[row["id"], "path"]), path)
            caption = (f"{rank}. {row['id']}: true {row['true']} (p {row['score']:.2f}), predicted "
                       f"{row['predicted']} (p {row['p_predicted']:.2f})")
        else:
            _det_image(preds, table, by_id, row["id"], path)
            caption = f"{rank}. {row['id']}: {row['missed']} of {row['true_boxes']} true boxes missed"
        out.append((str(path), caption))
    return out


def _thumbnail(image: Path, path: Path) -> None:
    import cv2

    from kcomp.data.images import read_rgb
    from kcomp.report.predictions import _write_png

    img = read_rgb(image)
    f = min(1.0, THUMB_SIDE / max(img.shape[:2]))
    if f < 1:
        img = cv2.resize(img, (round(img.shape[1] * f), round(img.shape[0] * f)), interpolation=cv2.INTER_AREA)
    _write_png(path, np.ascontiguousarray(img))


def _det_image(preds: Predictions, table: Any, by_id: Any, rid: Any, path: Path) -> None:
    from kcomp.report.predictions import _draw_boxes, _write_png

    i = int(np.flatnonzero(preds.df["id"].to_numpy() == rid)[0])
    row = by_id.loc[rid]
    img = _draw_boxes(table.file(row["path"]), preds.boxes.image(i), row["boxes"],
                      int(preds.df["height"].iloc[i]), int(preds.df["width"].iloc[i]), preds.classes)
    _write_png(path, img)


def _plain(v: Any) -> Any:
    """numpy scalars as JSON numbers; floats rounded for the table."""
    if isinstance(v, np.generic):
        v = v.item()
    return round(v, 6) if isinstance(v, float) else v

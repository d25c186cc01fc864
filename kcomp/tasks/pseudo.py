"""Pseudo-labels: test predictions become training rows with a label and a confidence (`kcomp pseudo`).

The rows are the predicted rows of the predictions' own index, kept whole (paths, sizes, image cache row) so a
training run reads them as it reads its index; only the label columns change, written the way the index stores
them: cls the argmax class in the target column (`--soft` adds the probabilities), seg an RLE per class at the image
size after the thresholds file's post-processing, ink a full-fragment PNG of the post-processed map, det the boxes
scoring at least `min_score`. A row's confidence in [0, 1]: cls the top probability; seg, ink and det the mean
(det: the least) normalised distance of a decision from its threshold t, |p - t| / (1 - t) above it and
(t - p) / t below, over the pixels that could be positive (p >= t / 2; seg: the least over classes) or over the
boxes, 1 when there is nothing to decide. `min_conf` and `top_frac` keep the most confident rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kcomp import options
from kcomp.errors import BadInput, BadUsage
from kcomp.options import Checked, Flag, Float, Text, option

if TYPE_CHECKING:

    from kcomp.artifacts.index import IndexTable
    from kcomp.artifacts.predictions import Predictions

TASKS = ("cls", "seg", "det", "ink")


@dataclass(frozen=True)
class PseudoOptions(Checked):
    """What `kcomp pseudo` was asked, checked on creation (each field with its Spec, as `TrainOptions`)."""

    min_conf: float = option(Float(0, 1), 0.0)  # keep rows at least this confident
    top_frac: float = option(Float(0, 1, low_open=True), 1.0)  # keep only this most confident share
    soft: bool = option(Flag(), False)  # cls: also store the class probabilities
    thresholds: str | None = option(Text())  # seg/ink: THRESHOLDS.json (default: 0.5, no post-processing)
    min_score: float = option(Float(0, 1), 0.5)  # det: boxes scoring at least this become labels


def make_pseudo(pred_paths: list[str], output: str, opts: PseudoOptions | None = None,
                **values: Any) -> tuple[str, dict[str, Any]]:
    """`kcomp pseudo`: write the pseudo-labelled rows of the test predictions `pred_paths`, as `opts` (or the
    PseudoOptions fields given as keywords) say; returns (written, summary)."""
    from kcomp.artifacts.pseudo import write_pseudo

    opts = opts or PseudoOptions(**values)
    preds, table = _inputs(pred_paths)
    task = preds[0].task
    if opts.soft and task != "cls":
        raise BadUsage(f"--soft applies to cls predictions (class probabilities); these are {task}")
    settings = _thresholds(opts.thresholds, task)
    from kcomp.tasks._pseudo_labels import HANDLERS

    handler = HANDLERS[task]
    conf = np.concatenate([handler.confidence(p, table, settings, opts.min_score) for p in preds])
    keep = select(conf, min_conf=opts.min_conf, top_frac=opts.top_frac)
    labels_dir = _labels_dir(output, [*pred_paths, opts.thresholds]) if task == "ink" else None
    options.validated("pseudo")
    parts, offset = [], 0
    for p in preds:
        mine = keep[(keep >= offset) & (keep < offset + len(p.df))] - offset
        offset += len(p.df)
        parts.append(handler.rows(p, table, mine, settings, min_score=opts.min_score, soft=opts.soft,
                                  labels_dir=labels_dir))
    import pandas as pd

    df = pd.concat(parts, ignore_index=True)
    df["confidence"] = conf[keep]
    meta = {"predictions": [p.source for p in preds], "thresholds": opts.thresholds, "min_conf": opts.min_conf,
            "top_frac": opts.top_frac, "soft": opts.soft, "min_score": opts.min_score if task == "det" else None,
            "target": preds[0].meta.get("target"), "index": table.source}
    files = {"inklabels": labels_dir.name} if labels_dir is not None else None
    written = write_pseudo(df, output, table, files=files, **meta)
    summary = {"rows": len(conf), "kept": len(keep),
               "mean_confidence": float(conf[keep].mean()) if len(keep) else None, "task": task}
    return written, summary


def select(conf: np.ndarray, *, min_conf: float = 0.0, top_frac: float = 1.0) -> np.ndarray:
    """Indices (ascending) of the rows among the ceil(top_frac * n) most confident whose confidence is at least
    min_conf; ties at the cut are broken by row order."""
    n = len(conf)
    order = np.argsort(-conf, kind="stable")[: math.ceil(top_frac * n - 1e-9)]
    return np.sort(order[conf[order] >= min_conf])


def _inputs(paths: list[str]) -> tuple[list[Predictions], IndexTable]:
    """Test predictions of one task over disjoint rows of one index (the same rows twice are a blend: `ensemble`)."""
    from kcomp.artifacts.predictions import read_predictions

    if not paths:
        raise BadUsage("give at least one test predictions file")
    preds = [read_predictions(p, kind="test") for p in paths]
    first = preds[0]
    if first.task not in TASKS:
        raise BadInput(f"task {first.task!r} has no pseudo labels", path=first.source)
    seen: dict[Any, str] = {}
    for p in preds:
        if p.task != first.task or p.classes != first.classes:
            raise BadInput(f"task {p.task} / classes {p.classes} differ from {first.source}'s", path=p.source)
        for i in p.df["id"]:
            if i in seen:
                raise BadInput(f"id {i!r} is also in {seen[i]}; blend predictions of the same rows with `kcomp "
                               "ensemble` first", path=p.source)
            seen[i] = p.source
    table = first.index("needed for the rows' images")
    for p in preds[1:]:
        other = p.index("needed for the rows' images")
        if other.root != table.root:
            raise BadInput(f"its index's data root {other.root} differs from {table.root}", path=p.source)
    return preds, table


def _thresholds(path: str | None, task: str) -> dict[str, Any] | None:
    if path is None:
        return None
    if task not in ("seg", "ink"):
        raise BadUsage(f"--thresholds applies to seg and ink predictions; these are {task}")
    from kcomp.artifacts.thresholds import read_thresholds

    body = read_thresholds(path)
    if body["task"] != task:
        raise BadInput(f"holds {body.get('task')} thresholds; the predictions are {task}", path=path)
    return body


def _labels_dir(output: str, inputs: list[str | None]) -> Path:
    """Where ink label PNGs go: `pseudo.parquet` -> `pseudo_labels/` beside it; an output the command checks as
    it checked -o (not a file, not an input, nothing an input reads)."""
    from kcomp.artifacts.outputs import check_outputs

    if output == "-":
        raise BadUsage("ink pseudo labels are PNG files beside the table: give -o PATH, not stdout")
    p = Path(output)
    labels = p.parent / f"{p.stem if p.suffix == '.parquet' else p.name}_labels"
    check_outputs(dirs={"the labels directory of -o": labels}, inputs=inputs)
    return labels

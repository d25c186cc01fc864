"""Likely label errors among the train rows, by confident learning over out-of-fold probabilities (cleanlab).

OOF probabilities come from models that never saw the row, so a row whose given label its held-out model finds
unlikely (relative to how confident the models are on each class: cleanlab's per-class thresholds and the confident
joint) is a candidate label error. cleanlab's `find_label_issues` flags them and `get_label_quality_scores` ranks
them; the suggested label is the most probable class. cleanlab is imported here only, when `clean` runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from kcomp.errors import BadInput, BadUsage
from kcomp.options import Checked, Choice, lazy, option

if TYPE_CHECKING:
    import pandas as pd

    from kcomp.artifacts.predictions import Predictions

# cleanlab's `filter_by` methods (prune_by_noise_rate is its default)
FILTERS = ("prune_by_noise_rate", "prune_by_class", "both", "confident_learning", "predicted_neq_given",
           "low_normalized_margin", "low_self_confidence")
QUALITY = ("self_confidence", "normalized_margin", "confidence_weighted_entropy")


@dataclass(frozen=True)
class CleanOptions(Checked):
    """What `kcomp clean` was asked, checked on creation (each field with its Spec, as `TrainOptions`)."""

    filter_by: str = option(Choice(lazy("kcomp.post.label_issues", "FILTERS"), what="cleanlab filter"),
                            "prune_by_noise_rate")
    quality: str = option(Choice(lazy("kcomp.post.label_issues", "QUALITY"), what="label quality score"),
                          "self_confidence")


def find_issues(preds: Predictions, *, filter_by: str = "prune_by_noise_rate",
                quality: str = "self_confidence") -> pd.DataFrame:
    """The flagged rows of cls OOF predictions, lowest label quality first (columns of the label-issues
    artifact)."""
    import pandas as pd

    if filter_by not in FILTERS:
        raise BadUsage(f"--filter-by {filter_by}: choose one of {', '.join(FILTERS)}")
    if quality not in QUALITY:
        raise BadUsage(f"--quality {quality}: choose one of {', '.join(QUALITY)}")
    labels, probs = _labels_and_probs(preds)
    flagged, scores = _cleanlab(labels, probs, filter_by, quality, preds.source)
    classes = preds.classes or [str(c) for c in range(probs.shape[1])]
    idx = flagged[np.argsort(scores[flagged], kind="stable")]
    suggested = probs.argmax(1)
    folds = preds.df["fold"].to_numpy(np.int64) if "fold" in preds.df.columns else np.full(len(labels), -1)
    return pd.DataFrame({
        "id": preds.df["id"].to_numpy()[idx], "fold": folds[idx], "given": labels[idx],
        "suggested": suggested[idx].astype(np.int64), "given_class": [classes[c] for c in labels[idx]],
        "suggested_class": [classes[c] for c in suggested[idx]], "quality": scores[idx].astype(np.float64)})


def _labels_and_probs(preds: Predictions) -> tuple[np.ndarray, np.ndarray]:
    if preds.task != "cls":
        raise BadUsage(f"clean finds label errors in single-label classification OOF; {preds.source} holds "
                       f"{preds.task} predictions")
    if preds.kind != "oof" or "target" not in preds.df.columns:
        raise BadInput("needs OOF predictions with a target column (from `kcomp oof`)", path=preds.source)
    probs = preds.probs().astype(np.float64)
    labels = preds.df["target"].to_numpy()
    k = probs.shape[1]
    if labels.dtype.kind not in "iu" or len(labels) and (labels.min() < 0 or labels.max() >= k):
        raise BadInput(f"column target must hold class indices 0..{k - 1}", path=preds.source)
    sums = probs.sum(1)
    if probs.min(initial=0) < 0 or not np.allclose(sums, 1.0, atol=1e-3):
        raise BadInput(f"probs are not probabilities (a row sums to {sums[np.argmax(abs(sums - 1))]:.4g})",
                       path=preds.source)
    missing = sorted(set(range(k)) - set(labels.tolist()))
    if missing:
        raise BadInput(f"no row has target class {missing[0]}: confident learning needs every class among the "
                       "given labels", path=preds.source)
    return labels.astype(np.int64), probs / sums[:, None]


def _cleanlab(labels: np.ndarray, probs: np.ndarray, filter_by: str, quality: str, where: str
              ) -> tuple[np.ndarray, np.ndarray]:
    """(indices of the flagged rows, label quality of every row) from cleanlab; its refusals become one line."""
    import warnings

    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # cleanlab warns about small classes; the counts are in the output
            mask: Any = find_label_issues(labels, probs, filter_by=filter_by, n_jobs=1)
            scores = get_label_quality_scores(labels, probs, method=quality)
    except (ValueError, TypeError) as e:
        raise BadInput(f"cleanlab refused the OOF probabilities: {str(e).strip().splitlines()[0]}",
                       path=where) from None
    return np.flatnonzero(np.asarray(mask, bool)), np.clip(np.asarray(scores, np.float64), 0.0, 1.0)


def clean(oof: str, output: str, *, filter_by: str = "prune_by_noise_rate", quality: str = "self_confidence"
          ) -> tuple[str, dict[str, Any]]:
    """`kcomp clean`: read OOF predictions, write the label-issues artifact; returns (written, summary)."""
    from kcomp.artifacts.label_issues import write_label_issues
    from kcomp.artifacts.predictions import read_predictions

    preds = read_predictions(oof)
    df = find_issues(preds, filter_by=filter_by, quality=quality)
    classes = preds.classes or [str(c) for c in range(len(preds.probs()[0]))]
    meta = {"task": "cls", "classes": classes, "target": preds.meta.get("target") or "label", "oof": preds.source,
            "index": preds.meta.get("index"), "runs": preds.meta.get("runs"), "filter_by": filter_by,
            "quality": quality, "rows": len(preds.df)}
    from kcomp import options

    options.validated("clean")
    written = write_label_issues(df, output, **meta)
    per_class = {c: int((df["given"] == k).sum()) for k, c in enumerate(classes)}
    return written, {"rows": len(preds.df), "issues": len(df), "filter_by": filter_by, "by_given_class": per_class}

"""SIIM-FISABIO-RSNA COVID-19 text formats: `PredictionString` groups and the `boxes` column of train_image_level.csv.

A PredictionString is a flat run of 6-token groups `label conf x1 y1 x2 y2` ("opacity 0.5 10 20 30 40 none 1 0 0 1 1";
study rows use `negative|typical|indeterminate|atypical conf 0 0 1 1`). The `boxes` column holds a Python literal
(`[{'x': .., 'y': .., 'width': .., 'height': ..}, ...]`): it is read with ast.literal_eval, which builds literals
and never calls, imports or looks anything up, and the result is then checked field by field.
"""

from __future__ import annotations

import ast
import itertools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kcomp.errors import BadInput

__all__ = ["Pred", "format_prediction_string", "format_prediction_strings", "parse_prediction_string",
           "parse_siim_boxes"]

BOX_KEYS = ("x", "y", "width", "height")
_NUMBER = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")  # no nan/inf/1_000/hex
_MAX_CELL = 1_000_000  # characters; real cells are < 1 kB, and the parser's memory grows with nesting
_VALUE_FIELDS = ("conf", "x1", "y1", "x2", "y2")


@dataclass(frozen=True)
class Pred:
    """One group of a PredictionString: a class label, its confidence and a box in original pixels."""

    label: str
    conf: float
    x1: float
    y1: float
    x2: float
    y2: float


def _at(where: str) -> str:
    return f"{where}: " if where else ""


def _floaty(token: str) -> bool:
    """Would float() take it ("0.5", "nan", "1_0")? Then it cannot be a label: the groups would be misread."""
    try:
        float(token)
    except ValueError:
        return False
    return True


def _num(value: float, decimals: int) -> str:
    """Fixed-point without trailing zeros ("1", "0.5"): no exponent for the grader's float() to trip on."""
    text = f"{value:.{decimals}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def format_prediction_string(preds: Sequence[Pred], decimals: int = 6) -> str:
    """Space-joined groups; values rounded to `decimals`. Labels must be single tokens, values finite."""
    if decimals < 0:
        raise BadInput(f"decimals must be >= 0, got {decimals}")
    out = []
    for k, p in enumerate(preds):
        if not isinstance(p.label, str) or p.label.split() != [p.label] or _floaty(p.label):
            raise BadInput(f"prediction {k + 1}: label {p.label!r} must be one non-numeric token")
        values = [getattr(p, f) for f in _VALUE_FIELDS]
        for name, v in zip(_VALUE_FIELDS, values):
            if not math.isfinite(v):
                raise BadInput(f"prediction {k + 1} ({p.label}): {name} is {v}, not a finite number")
        out.append(" ".join([p.label, *(_num(v, decimals) for v in values)]))
    return " ".join(out)


def format_prediction_strings(labels: Any, values: Any, offsets: Any, decimals: int = 6) -> list[str]:
    """Many PredictionStrings from arrays, without a `Pred` per group: string i holds groups offsets[i]:offsets[i+1]
    (`labels` (n,), `values` (n, 5) conf x1 y1 x2 y2). The text is `format_prediction_string`'s, number for number."""
    import numpy as np

    if decimals < 0:
        raise BadInput(f"decimals must be >= 0, got {decimals}")
    labels = np.asarray(labels, dtype=str)
    values = np.asarray(values, dtype=np.float64).reshape(-1, len(_VALUE_FIELDS))
    for label in np.unique(labels).tolist():
        if label.split() != [label] or _floaty(label):
            raise BadInput(f"label {label!r} must be one non-numeric token")
    bad = ~np.isfinite(values)
    if bad.any():
        k, f = np.argwhere(bad)[0].tolist()
        raise BadInput(f"prediction {k + 1} ({labels[k]}): {_VALUE_FIELDS[f]} is {values[k, f]}, not a finite number")
    text = np.char.mod(f"%.{decimals}f", values)  # printf rounding, as f"{v:.{decimals}f}"
    if decimals > 0:
        text = np.char.rstrip(np.char.rstrip(text, "0"), ".")
    text[text == "-0"] = "0"
    groups = labels
    for q in range(text.shape[1]):
        groups = np.char.add(np.char.add(groups, " "), text[:, q])
    cells = groups.tolist()
    return [" ".join(cells[a:b]) for a, b in itertools.pairwise(np.asarray(offsets).tolist())]


def parse_prediction_string(text: str, *, where: str = "") -> list[Pred]:
    """Groups of `label conf x1 y1 x2 y2`; an empty string is no prediction. `where` names the row in errors."""
    at = _at(where)
    if not isinstance(text, str):
        raise BadInput(f"{at}PredictionString must be text, got {type(text).__name__} {text!r}")
    tokens = text.split()
    preds = []
    for i in range(0, len(tokens), 6):
        label, rest = tokens[i], tokens[i + 1:i + 6]
        if _floaty(label):
            raise BadInput(f"{at}PredictionString token {i + 1} {label!r}: expected a label "
                           f"(groups are `label conf x1 y1 x2 y2`)")
        if len(rest) < 5:
            raise BadInput(f"{at}PredictionString has {len(tokens)} tokens, not groups of 6: the last group "
                           f"{' '.join(tokens[i:])!r} has {len(rest) + 1}")
        values = []
        for j, (name, tok) in enumerate(zip(_VALUE_FIELDS, rest)):
            if not _NUMBER.fullmatch(tok) or not math.isfinite(value := float(tok)):
                raise BadInput(f"{at}PredictionString token {i + j + 2} {tok!r} ({name} of {label!r}) "
                               f"is not a finite number")
            values.append(value)
        preds.append(Pred(label, *values))
    return preds


def parse_siim_boxes(cell: Any, *, where: str = "") -> list[dict[str, float]]:
    """The `boxes` cell as [{'x', 'y', 'width', 'height'}] floats; "", "nan" or a missing (NaN/None) cell is []."""
    at = _at(where)
    if cell is None or (isinstance(cell, float) and math.isnan(cell)):
        return []
    if not isinstance(cell, str):
        raise BadInput(f"{at}boxes must be text, got {type(cell).__name__} {cell!r}")
    text = cell.strip()
    if text.lower() in ("", "nan"):
        return []
    shown = text if len(text) <= 80 else text[:77] + "..."
    if len(text) > _MAX_CELL:
        raise BadInput(f"{at}boxes cell is {len(text)} characters long, more than any real cell: {shown!r}")
    try:
        value = ast.literal_eval(text)  # literals only: a call, name or attribute is a ValueError, never run
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        raise BadInput(f"{at}boxes is not a list of {{'x', 'y', 'width', 'height'}} literals: {shown!r}") from None
    if not isinstance(value, list):
        raise BadInput(f"{at}boxes must be a list of boxes, got a {type(value).__name__}: {shown!r}")
    boxes = []
    for k, box in enumerate(value, 1):
        if not isinstance(box, dict) or set(box) != set(BOX_KEYS):
            got = sorted(map(str, box)) if isinstance(box, dict) else type(box).__name__
            raise BadInput(f"{at}boxes item {k} must be a dict with keys x, y, width, height, got {got}: {shown!r}")
        out = {}
        for key in BOX_KEYS:
            v = box[key]
            try:
                ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            except OverflowError:  # an int too large for a float
                ok = False
            if not ok:
                raise BadInput(f"{at}boxes item {k}: {key} = {v!r} is not a finite number")
            out[key] = float(v)
        for key in ("width", "height"):
            if out[key] <= 0:
                raise BadInput(f"{at}boxes item {k}: {key} = {box[key]!r} must be > 0")
        boxes.append(out)
    return boxes

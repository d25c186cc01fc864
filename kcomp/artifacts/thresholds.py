"""THRESHOLDS.json as `submit`, `report`, `pseudo` and `pack` read it: the chosen values checked for type and range,
once. Keys of the held-out estimate (`heldout`, `options`, `in_sample_choice`, `rule`, `warnings`) are reported, not
applied, and pass as written."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kcomp.artifacts.jsonfile import read_json
from kcomp.errors import BadInput

TASKS = ("cls", "seg", "det", "ink")
# chosen values wherever they appear (top level for ink, per class for seg and ink): key -> (low, high, integer)
_VALUES: dict[str, tuple[float, float, bool]] = {
    "threshold": (0.0, 1.0, False), "top": (0.0, 1.0, False), "min_size": (0, float("inf"), True),
    "downscale": (1, float("inf"), True), "score": (float("-inf"), float("inf"), False),
    "min_size_fraction": (0.0, float("inf"), False), "mask_area": (0.0, float("inf"), False),
}


def read_thresholds(path: str | Path) -> dict[str, Any]:
    """A thresholds file whose task is known and whose values are numbers in range (NaN is refused by
    `read_json`: JSON has no NaN, and kcomp writes undefined numbers as null)."""
    body = read_json(path, "thresholds")
    where = str(path)
    if body.get("task") not in TASKS:
        raise BadInput(f"thresholds of unknown task {body.get('task')!r}; expected one of {', '.join(TASKS)}",
                       path=where)
    _check_values(body, "", where)
    classes = body.get("classes") or {}
    for name, values in classes.items():
        if values is not None and not isinstance(values, dict):
            raise BadInput(f"classes.{name} is {values!r:.40}, expected an object of values or null", path=where)
        _check_values(values or {}, f"classes.{name}.", where)
    size = body.get("size")
    if size is not None and not (isinstance(size, list) and len(size) == 2
                                 and all(_is_int(v) and v >= 1 for v in size)):
        raise BadInput(f"size is {size!r:.40}, expected [height, width] in pixels", path=where)
    return body


def _check_values(values: dict[str, Any], prefix: str, where: str) -> None:
    for key, (low, high, integer) in _VALUES.items():
        v = values.get(key)
        if v is None:
            continue
        if not (_is_int(v) if integer else _is_number(v)) or not low <= v <= high:
            span = "" if low == float("-inf") else f" >= {low:g}" if high == float("inf") else \
                f" in [{low:g}, {high:g}]"
            kind = "a whole number" if integer else "a number"
            raise BadInput(f"{prefix}{key} is {v!r:.40}, expected {kind}{span}", path=where)
    curve = values.get("curve")
    if curve is not None and not (isinstance(curve, list) and all(_is_point(p) for p in curve)):
        raise BadInput(f"{prefix}curve is not a list of [threshold, score] points", path=where)


def _is_point(p: Any) -> bool:
    """[threshold, score] (ink) or {threshold, score, ...} (seg); an undefined score is null."""
    t, s = (p.get("threshold"), p.get("score")) if isinstance(p, dict) else \
        (p[0], p[1]) if isinstance(p, list) and len(p) == 2 else (None, None)
    return _is_number(t) and (s is None or _is_number(s))


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)

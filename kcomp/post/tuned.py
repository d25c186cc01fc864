"""`kcomp tune-threshold`: what it is asked (`TuneOptions`), and the post-processing a thresholds file chose, read
back for whatever applies it: `submit`, `pseudo` and the report's overlays all binarise maps exactly as the file says
(defaults 0.5 / 0 / 0 without one)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from kcomp import console
from kcomp.errors import BadInput
from kcomp.options import MIN_SIZE, THRESHOLD, Checked, Int, check_fields, option, parse_list

SEG, INK = ("seg",), ("ink",)


@dataclass(frozen=True)
class TuneOptions(Checked):
    """What `kcomp tune-threshold` was asked, checked on creation (each field with its Spec, as `TrainOptions`).
    The seg grids are tuples of candidates, parsed once from `--thresholds 0.3,0.5` by `from_cli`; each option
    applies to one task (`check_task`, once the OOF file says which); unset, the task's tuner uses its own grid."""

    downscale: int | None = option(Int(1, 4096, only=INK))
    thresholds: tuple[float, ...] | None = option(replace(THRESHOLD, repeated=True, only=SEG))
    min_sizes: tuple[int, ...] | None = option(replace(MIN_SIZE, repeated=True, only=SEG))
    tops: tuple[float, ...] | None = option(replace(THRESHOLD, repeated=True, only=SEG))

    @classmethod
    def from_cli(cls, downscale: int | None, thresholds: str | None, min_sizes: str | None,
                 tops: str | None) -> TuneOptions:
        """The options as typed on the command line, each grid a comma-separated list, checked in that order."""
        grids = {"thresholds": (thresholds, THRESHOLD), "min_sizes": (min_sizes, MIN_SIZE), "tops": (tops, THRESHOLD)}
        return replace(cls(downscale=downscale), **{k: tuple(parse_list(k, text, spec)) if text is not None else None
                                                    for k, (text, spec) in grids.items()})

    def check_task(self, task: str) -> None:
        """Refuse a given option that does not apply to the OOF predictions' task."""
        check_fields(self, context=("task", task))


SEG_DEFAULTS = {"threshold": 0.5, "min_size": 0, "top": 0.0}
INK_DEFAULT_THRESHOLD = 0.5
_LOGGED: set[str] = set()


def seg_settings(thresholds: dict[str, Any] | None, classes: list[str], size: tuple[int, int]
                 ) -> dict[str, tuple[float, int, float]]:
    """class -> (threshold, min_size, top) from `classes.<name>` of a seg thresholds file. Min sizes tuned on maps
    of another size (the file's `size`) are scaled by the area ratio to `size`."""
    if not thresholds:
        return {c: (SEG_DEFAULTS["threshold"], SEG_DEFAULTS["min_size"], SEG_DEFAULTS["top"]) for c in classes}
    per = thresholds.get("classes")
    if not isinstance(per, dict):
        raise BadInput("thresholds: no per-class settings (`classes`); made by `kcomp tune-threshold` on seg OOF?")
    unknown = sorted(set(per) - set(classes))
    if unknown:
        raise BadInput(f"thresholds: unknown class {unknown[0]!r}; expected {', '.join(classes)}")
    scale = _area_scale(thresholds.get("size"), size)
    out = {}
    for c in classes:
        s = per.get(c) or {}
        if not isinstance(s, dict):
            raise BadInput(f"thresholds: class {c}: expected an object with threshold/min_size/top, got {s!r}")
        try:
            thr = float(s.get("threshold", SEG_DEFAULTS["threshold"]))
            min_size = int(s.get("min_size", SEG_DEFAULTS["min_size"]) or 0)
            top = float(s.get("top", SEG_DEFAULTS["top"]) or 0.0)
        except (TypeError, ValueError):
            raise BadInput(f"thresholds: class {c}: threshold, min_size and top must be numbers, got {s!r}") from None
        if not 0 < thr < 1 or min_size < 0 or not 0 <= top < 1:
            raise BadInput(f"thresholds: class {c}: threshold {thr} must be in (0, 1), min_size {min_size} >= 0 "
                           f"and top {top} in [0, 1)")
        out[c] = (thr, round(min_size * scale), top)
    return out


def _area_scale(tuned: Any, size: tuple[int, int]) -> float:
    if not tuned:
        return 1.0
    try:
        th, tw = (int(v) for v in tuned)
    except (TypeError, ValueError):
        raise BadInput(f"thresholds: size {tuned!r} is not [height, width]") from None
    if (th, tw) == tuple(size):
        return 1.0
    scale = size[0] * size[1] / max(1, th * tw)
    message = f"thresholds were tuned on {th}x{tw} maps; min sizes scaled by {scale:.3g} to {size[0]}x{size[1]}"
    if message not in _LOGGED:  # once, not once per map
        _LOGGED.add(message)
        console.log(message)
    return scale


def ink_settings(thresholds: dict[str, Any] | None) -> tuple[float, int]:
    """(threshold, min_size) of an ink thresholds file: top-level keys, or under classes/ink."""
    if not thresholds:
        return INK_DEFAULT_THRESHOLD, 0
    t = thresholds
    per_class = t.get("classes")
    if "threshold" not in t and isinstance(per_class, dict) and isinstance(per_class.get("ink"), dict):
        t = per_class["ink"]
    try:
        thr = float(t.get("threshold", INK_DEFAULT_THRESHOLD))
        min_size = int(t.get("min_size", 0) or 0)
    except (TypeError, ValueError):
        raise BadInput(f"thresholds: expected a number for threshold and min_size, got {t!r}") from None
    if not 0.0 <= thr <= 1.0 or min_size < 0:
        raise BadInput(f"thresholds: threshold {thr} must be in [0, 1] and min_size {min_size} >= 0")
    return thr, min_size

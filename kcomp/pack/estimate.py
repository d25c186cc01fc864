"""Will it finish? Each `tta` records the seconds it spent per test image (metadata `timing`); the package's
inference costs their sum per image, times the hidden test set's size, against the notebook's time limit."""

from __future__ import annotations

import math
import re
from typing import Any

from kcomp.errors import BadUsage
from kcomp.pack.chain import Step

_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "": 1.0}


def parse_duration(text: str) -> float:
    """`9h`, `90m`, `1h30m`, `3600s` or plain seconds."""
    parts = re.fullmatch(r"\s*(?:(\d+(?:\.\d+)?)\s*([hms]?)\s*)+", text.lower())
    pieces = re.findall(r"(\d+(?:\.\d+)?)\s*([hms]?)", text.lower()) if parts else []
    seconds = sum(float(v) * _UNITS[u] for v, u in pieces)
    if not pieces or seconds <= 0:
        raise BadUsage(f"--time-limit {text}: expected a positive duration such as 9h, 90m, 1h30m or 3600")
    return seconds


def estimate(steps: list[Step], *, test_images: int | None, limit: float) -> dict[str, Any]:
    """Per `tta` step: seconds per image (on one process: a DDP run's wall time times its processes) and the
    device measured on; their sum times `test_images`, or how many images fit in `limit` without it."""
    rows = []
    for s in steps:
        if s.kind != "tta":
            continue
        t = s.timing or {}
        per = t.get("seconds_per_image")
        per = float(per) * int(t.get("processes") or 1) if per is not None else None
        rows.append({"source": s.source, "seconds_per_image": per, "device": t.get("device")})
    known = [r["seconds_per_image"] for r in rows if r["seconds_per_image"] is not None]
    complete = len(known) == len(rows)
    per_image = sum(known) if complete else None
    out: dict[str, Any] = {"steps": rows, "seconds_per_image": per_image, "test_images": test_images,
                           "time_limit": limit, "seconds": None, "fits": None, "max_images": None}
    if per_image:
        out["max_images"] = math.floor(limit / per_image)
        if test_images is not None:
            out["seconds"] = per_image * test_images
            out["fits"] = out["seconds"] <= limit
    return out


def describe(est: dict[str, Any]) -> list[str]:
    """Lines for stderr, one per tta step and a verdict."""
    lines = []
    for r in est["steps"]:
        per = r["seconds_per_image"]
        lines.append(f"  tta {r['source']}: " + (f"{per:.4f} s/image on {r['device']}" if per is not None else
                                                  "not measured (made before kcomp recorded tta timing)"))
    per, limit = est["seconds_per_image"], est["time_limit"]
    if per is None:
        lines.append("estimate: incomplete; re-run the unmeasured tta steps to time them")
    elif est["test_images"] is None:
        lines.append(f"estimate: {per:.4f} s/image: about {est['max_images']} test images fit in {_hours(limit)} "
                     f"(give --test-images N to check a test set)")
    else:
        verdict = "fits" if est["fits"] else "[red]does NOT fit[/red]"
        lines.append(f"estimate: {est['test_images']} images x {per:.4f} s = {_hours(est['seconds'])}, {verdict} "
                     f"in the {_hours(limit)} limit (measured on the devices above; prep not included)")
    return lines


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h" if seconds >= 360 else f"{seconds:.0f} s"

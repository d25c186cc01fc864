"""Shared by the benchmark scripts: append a section with the machine's description to RESULTS.md."""

from __future__ import annotations

import datetime
import os
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T, U = TypeVar("T"), TypeVar("U")

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def machine() -> str:
    import cv2
    import numpy as np

    return (f"{datetime.date.today().isoformat()}, processor {platform.processor() or platform.machine()}, "
            f"{os.cpu_count()} CPUs, numpy {np.__version__}, opencv {cv2.__version__}")


def append_section(name: str, lines: list[str], *, note: str = "", extra: str = "") -> None:
    """Append (never overwrite): every benchmark writes to the same file."""
    try:
        with RESULTS.open("x") as f:
            f.write("# Benchmark results\n")
    except FileExistsError:
        pass
    info = machine() + (f", {extra}" if extra else "")
    with RESULTS.open("a") as f:
        f.write(f"\n## {name} ({info})\n\n" + (f"{note}\n\n" if note else "") + "".join(f"- {ln}\n" for ln in lines))


def alternate(ours: Callable[[], T], limit: Callable[[], U], repeats: int,
              speed: Callable[[Any], float] = float) -> tuple[list[T], list[U], list[float]]:
    """Runs limit, ours, limit, ..., ours, limit and returns (ours' results, the limit's, ratios): each run of ours
    is compared with the mean speed of the two limit runs around it. On a shared machine the limit itself varies
    by +-10% from run to run; pairing neighbours cancels slow phases, and the median of the ratios (not a best-of,
    which favours the side with more runs) keeps the estimate unbiased. `speed` reads a speed from a result."""
    limits, mine, ratios = [limit()], [], []
    for _ in range(repeats):
        mine.append(ours())
        limits.append(limit())
        ratios.append(speed(mine[-1]) / ((speed(limits[-2]) + speed(limits[-1])) / 2))
    return mine, limits, ratios

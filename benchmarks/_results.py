"""Shared by the benchmark scripts: append a section with the machine's description to RESULTS.md."""

from __future__ import annotations

import datetime
import os
import platform
from pathlib import Path

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

"""Fixed-size matplotlib figures on an Agg canvas (no pyplot, no display) written atomically as PNG."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

WIDTH, HEIGHT = 800, 500  # every plot is exactly this many pixels, so pages line up and tests can check it
DPI = 100


def figure(nrows: int = 1, ncols: int = 1) -> tuple[Any, list[Any]]:
    """A WIDTH x HEIGHT px figure with an nrows x ncols grid of axes (flattened, row by row)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(WIDTH / DPI, HEIGHT / DPI), dpi=DPI, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, list(axes.ravel())


def save(fig: Any, path: Path) -> str:
    """PNG of exactly WIDTH x HEIGHT (no bbox_inches='tight', which would change the size)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from kcomp.artifacts import atomic_write_bytes

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    atomic_write_bytes(path, buf.getvalue())
    return str(path)


def slug(text: str) -> str:
    """A file-name-safe version of an id or input name (never a path outside the report dir)."""
    out = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(text)).strip("._")
    return out or "_"

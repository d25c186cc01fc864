"""`kcomp report`: read-only pictures of runs, predictions and thresholds, as PNGs plus one static index.html.

One module per input kind (`run`, `predictions`, `thresholds`) turns its input into a `Section` (facts, a table,
images, notes); `page` writes the HTML, `terminal` the rich summary; `build` picks the module by input kind.
matplotlib is imported only inside the plotting functions (Agg canvas, no pyplot state).
"""

from __future__ import annotations

from kcomp.report.section import Image, Section

__all__ = ["Image", "Section"]

"""Metric registry: the training loop picks best checkpoints with it and `oof` reports the CV score with it.

A metric is `fn(y_true, y_score) -> float` plus its direction, so callers never guess whether to maximise.
Metrics are registered by the explicit imports at the bottom of this module, never from elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from kcomp.registry import Registry

MetricFn = Callable[[np.ndarray, np.ndarray], float]


@dataclass(frozen=True)
class Metric:
    name: str
    fn: MetricFn
    higher_is_better: bool

    def __call__(self, y_true: np.ndarray, y_score: np.ndarray) -> float:
        return float(self.fn(y_true, y_score))

    def is_better(self, new: float, old: float | None) -> bool:
        """True when `new` beats `old` (None = nothing yet), so checkpoint code need not branch on direction."""
        if old is None:
            return True
        return new > old if self.higher_is_better else new < old


METRICS: Registry[Metric] = Registry("metric")


def register_metric(name: str, *, higher_is_better: bool) -> Callable[[MetricFn], MetricFn]:
    """Decorator: wrap `fn` into a `Metric` under `name`; the function itself is returned unchanged."""

    def deco(fn: MetricFn) -> MetricFn:
        doc = (fn.__doc__ or "").strip().splitlines()
        METRICS.register(name, summary=doc[0] if doc else "")(Metric(name, fn, higher_is_better))
        return fn

    return deco


def get_metric(name: str) -> Metric:
    """The metric called `name`; BadUsage listing the choices if there is none."""
    return METRICS.get(name)


def list_metrics() -> list[str]:
    return METRICS.names()


from kcomp.metrics import _classification  # noqa: E402,F401  (registers the classification metrics)
from kcomp.metrics import _segmentation  # noqa: E402,F401  (registers the segmentation metrics)
from kcomp.metrics import _detection  # noqa: E402,F401  (registers the detection metrics)

__all__ = ["METRICS", "Metric", "get_metric", "list_metrics", "register_metric"]

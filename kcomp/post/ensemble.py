"""Blend several models' predictions of the same rows into one array.

Elementwise on any shape (N,), (N, C), (N, H, W)..., so class probabilities and segmentation probability maps
share one code path; arrays are accumulated one at a time so large maps are never stacked in memory.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from kcomp.errors import BadInput, BadUsage
from kcomp.options import WEIGHT, Choice, Float, Weighted, check_values, lazy, option, specs

METHODS = ("mean", "rank", "geometric", "power")
GEOMETRIC_EPS = 1e-7
POWER = 2.0  # --method power's default exponent


@dataclass(frozen=True)
class EnsembleOptions(Weighted):
    """What `kcomp ensemble` was asked, checked on creation (each field with its Spec, as `TrainOptions`).
    `weights` holds one number per input file, parsed once from `--weights 1,2` by `from_cli`; `power` is None
    when not given (it applies to --method power only) and `exponent` the one blending uses."""

    method: str = option(Choice(lazy("kcomp.post.ensemble", "METHODS"), what="ensemble method"), "mean")
    weights: tuple[float, ...] | None = option(replace(WEIGHT, repeated=True))
    # p**64 already underflows float64 for p < 1e-5: larger powers zero whole rows
    power: float | None = option(Float(0, 64, low_open=True, default=POWER,
                                       needs=("--method power", lambda v: v["method"] == "power")))

    @property
    def exponent(self) -> float:
        return POWER if self.power is None else self.power


ENSEMBLE = specs(EnsembleOptions)  # what `kcomp ensemble` accepts; combine holds its callers to the same values


def _weights(weights: Sequence[float] | None, n: int) -> np.ndarray:
    if weights is None:
        return np.full(n, 1.0 / n)
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if len(w) != n:
        raise BadUsage(f"got {len(w)} weights for {n} arrays")
    if not np.isfinite(w).all() or (w < 0).any():
        raise BadUsage(f"weights must be finite and non-negative, got {list(map(float, w))}")
    if w.sum() == 0:
        raise BadUsage("weights are all zero")
    return w / w.sum()


def _rank01(a: np.ndarray) -> np.ndarray:
    """Average-tie ranks along axis 0 scaled to [0, 1]; a single row gets 0.5 since it has no order."""
    from scipy.stats import rankdata

    n = a.shape[0]
    if n == 1:
        return np.full(a.shape, 0.5)
    return (rankdata(a, method="average", axis=0) - 1.0) / (n - 1)


def combine(
    arrays: Sequence[np.ndarray],
    *,
    method: str = "mean",
    weights: Sequence[float] | None = None,
    power: float = 2.0,
    normalize: bool = True,
) -> np.ndarray:
    """Weighted blend of equally shaped arrays, returned as float32.

    mean: weighted arithmetic mean. geometric: exp of the weighted mean of log(clip(p, 1e-7, 1)).
    power: weighted mean of p**power with no root (Kaggle's power averaging, which sharpens confident models).
    rank: weighted mean of per-column ranks along axis 0 scaled to [0, 1]; only order matters (AUC metrics).
    With `normalize`, 2-D results of mean/geometric/power are rescaled to rows summing to 1 when the first
    input's rows already sum to 1 (single-label class distributions); multi-label or map inputs are left alone.
    """
    check_values(ENSEMBLE, method=method, **({"power": power} if method == "power" else {}))
    if len(arrays) == 0:
        raise BadUsage("nothing to combine: no arrays given")
    shape = np.shape(arrays[0])
    if len(shape) == 0:
        raise BadInput("array 0 is a scalar; expected at least one row axis")
    for i, a in enumerate(arrays[1:], start=1):
        if np.shape(a) != shape:
            raise BadInput(f"array {i} has shape {np.shape(a)} but array 0 has shape {shape}")
    w = _weights(weights, len(arrays))

    acc = np.zeros(shape, dtype=np.float64)
    rows_are_distributions = False
    for i, (a, wi) in enumerate(zip(arrays, w)):
        a = np.asarray(a, dtype=np.float64)
        if not np.isfinite(a).all():
            raise BadInput(f"array {i} contains NaN or inf")
        if i == 0 and a.ndim == 2:
            rows_are_distributions = bool(np.allclose(a.sum(axis=1), 1.0, atol=1e-3))
        if wi == 0:
            continue
        if method == "mean":
            acc += wi * a
        elif method == "geometric":
            acc += wi * np.log(np.clip(a, GEOMETRIC_EPS, 1.0))
        elif method == "power":
            if (a < 0).any():
                raise BadInput(f"array {i} has negative values; power averaging needs probabilities")
            acc += wi * np.power(a, power)
        else:
            acc += wi * _rank01(a)
    if method == "geometric":
        acc = np.exp(acc)
    if normalize and method != "rank" and rows_are_distributions:
        sums = acc.sum(axis=1, keepdims=True)
        np.divide(acc, sums, out=acc, where=sums > 0)
    return acc.astype(np.float32)


MAP_METHODS = ("mean", "geometric", "power")


def check_map_method(method: str) -> None:
    if method not in MAP_METHODS:
        raise BadUsage(f"--method {method}: dense maps blend with one of {', '.join(MAP_METHODS)} (rank has no "
                       "meaning per pixel)")


def blend_maps(sources: Sequence[Mapping[str, np.ndarray]], keys: Sequence[Sequence[str]], *, method: str = "mean",
               weights: Sequence[float] | None = None, power: float = 2.0) -> Iterator[np.ndarray]:
    """Blend dense maps (seg/ink) row by row: row i combines `sources[j][keys[j][i]]` over models j. Maps are
    uint8 prob*255 (or floats in [0, 1]) and come back as uint8, one row at a time, so an ensemble of thousands
    of 4x350x525 maps or of whole fragments never holds more than one row's maps in memory."""
    check_map_method(method)
    for row in zip(*keys, strict=True):
        probs = []
        for src, key in zip(sources, row, strict=True):
            m = np.asarray(src[key])
            probs.append(m / 255.0 if m.dtype == np.uint8 else m)
        yield np.rint(combine(probs, method=method, weights=weights, power=power, normalize=False) * 255.0
                      ).clip(0, 255).astype(np.uint8)


def mean_maps(models: Iterable[list[np.ndarray]]) -> list[np.ndarray]:
    """Row by row, the mean of several models' uint8 maps rounded back to uint8, taking the models one at a time:
    memory is one model's maps plus a uint16 sum, not every model's (5 folds of 3,700 Clouds test maps at
    4x350x525 would be 13 GB). Sums of uint8 are exact, so this equals the float32 mean of all maps at once."""
    it = iter(models)
    first = next(it)
    sums: list[np.ndarray] | None = None
    n = 1
    for maps in it:
        if sums is None:
            sums = [m.astype(np.uint16) for m in first]
        if len(maps) != len(sums):
            raise BadInput(f"model {n} predicted {len(maps)} rows, model 0 {len(sums)}")
        for s, m in zip(sums, maps, strict=True):
            s += m
        n += 1
    if sums is None:
        return first
    return [_rounded_mean(s, n) for s in sums]


def _rounded_mean(total: np.ndarray, n: int) -> np.ndarray:
    """rint(total / n) as uint8, rounded in place: one float32 copy of the map at a time, not two (an ink fragment's
    map is ~100 Mpx, so 400 MB less at peak)."""
    mean = np.divide(total, np.float32(n), dtype=np.float32)
    np.rint(mean, out=mean)
    return mean.astype(np.uint8)


def mean_probs(models: Iterable[np.ndarray]) -> np.ndarray:
    """The mean of several models' probability arrays, accumulated one model at a time."""
    total, n = None, 0
    for p in models:
        total = np.asarray(p, dtype=np.float64).copy() if total is None else total + p
        n += 1
    if total is None:
        raise BadUsage("no predictions to average")
    return (total / n).astype(np.float32)

"""Competition presets: each only translates raw layout -> index (`prep`) and predictions -> submission (`submit`).

Adding one: write a module with a class decorated `@register_competition("name")` and add it to `_MODULES`. Its
`prep` and `submit` declare the options they take as keyword parameters; the commands refuse the others for it.
Modules must not import heavy libraries at top level: every `kcomp` start-up (`--help` too) imports them to list
presets.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from kcomp.options import CACHE_SIZE, SEED, WORKERS, Checked, Choice, Flag, Float, Text, given, option, specs
from kcomp.registry import Registry

if TYPE_CHECKING:
    from pathlib import Path

    import pandas as pd

    from kcomp.artifacts.predictions import Predictions


class Competition(Protocol):
    task: str
    id_column: str
    # optional, default True: whether `kcomp train` on this preset's data starts from pretrained weights when
    # neither --pretrained nor --no-pretrained is given (`kcomp.runs.config.settle_pretrained`)
    pretrained: bool

    def prep(self, raw: Path | None, out: Path, **options: Any) -> list[str]:
        """Write `out/index.parquet` (+ caches); return the paths written. `options`: the keyword parameters the
        preset declares (size, workers, seed ...)."""

    def submit(self, preds: list[Predictions], *, thresholds: dict[str, Any] | None) -> pd.DataFrame:
        """Submission rows (any order; `submit` aligns them with the sample)."""


@dataclass(frozen=True)
class PrepOptions(Checked):
    """What `kcomp prep` was asked, checked on creation (each field with its Spec, as `TrainOptions`). Each
    applies to the presets whose `prep` declares it (`preset`); unset, the preset uses its own default."""

    seed: int | None = option(SEED)
    split_fragment: str | None = option(Text())  # vesuvius: fragment names, comma-separated
    size: int | None = option(CACHE_SIZE)
    bits: int | None = option(Choice((8, 16), kind=int))
    workers: int | None = option(WORKERS)
    skip_bad: bool = option(Flag(), False)

    def preset(self, comp: Competition, name: str) -> dict[str, Any]:
        """The options given, as the keywords of the preset's `prep`; one it does not declare is refused."""
        values = given(self)
        check_options(comp, name, "prep", values)
        return values


PREP = specs(PrepOptions)  # what `kcomp prep` accepts; a preset's prep holds its callers to the same values


@dataclass(frozen=True)
class SubmitOptions(Checked):
    """What `kcomp submit` was asked, checked on creation (each field with its Spec, as `TrainOptions`)."""

    thresholds: str | None = option(Text())  # THRESHOLDS.json from `kcomp tune-threshold`
    sample: str | None = option(Text())  # sample_submission.csv (default: the one of the runs' raw data, if any)
    none_power: float | None = option(Float(0))  # siim-covid19

    def preset(self, comp: Competition, name: str) -> dict[str, Any]:
        """The preset options given (all but the files), as the keywords of the preset's `submit`; one it does not
        declare is refused."""
        values = {k: v for k, v in given(self).items() if k not in ("thresholds", "sample")}
        check_options(comp, name, "submit", values)
        return values


COMPETITIONS: Registry[type[Competition]] = Registry("competition")
register_competition = COMPETITIONS.register

_MODULES = ("kcomp.competitions.cassava", "kcomp.competitions.clouds", "kcomp.competitions.demo",
            "kcomp.competitions.siim", "kcomp.competitions.vesuvius")


def _load() -> None:
    for m in _MODULES:
        importlib.import_module(m)


def get_competition(name: str) -> Competition:
    _load()
    return COMPETITIONS.get(name)()


def list_competitions() -> list[str]:
    _load()
    return COMPETITIONS.names()


def describe() -> str:
    _load()
    return COMPETITIONS.describe()


def check_options(comp: Competition, name: str, step: str, options: dict[str, Any]) -> None:
    """Options that apply to some presets only (`prep --bits`, `submit --none-power`) reach a preset's `prep` or
    `submit` only when it declares them as keyword parameters; given to any other preset they are a usage error
    naming the option and the preset, not silently ignored."""
    import inspect

    from kcomp.errors import BadUsage

    params = inspect.signature(getattr(comp, step)).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    accepted = [p for p, v in params.items() if v.kind is inspect.Parameter.KEYWORD_ONLY and p != "thresholds"]
    reads = f"it reads {', '.join('--' + p.replace('_', '-') for p in accepted)}" if accepted else "it reads no options"
    for key in options:
        if key not in params:
            raise BadUsage(f"--{key.replace('_', '-')} does not apply to competition {name} ({reads})")

"""What each option accepts, declared once as a `Spec` and checked before a command creates anything.

Every command's options are one frozen dataclass in the library module doing the command's work (`TrainOptions`
for train, `PredictOptions` for oof/tta, `SplitOptions`, `WbfOptions`, `EnsembleOptions`, `StackOptions`,
`TuneOptions`, `PrepOptions`, `SubmitOptions`, `CleanOptions`, `PseudoOptions`, `ReportOptions`, `PackOptions`,
`PreviewOptions` for tta's previews), built once by the command from the CLI values. Each field is declared with
`option(Spec, default)`: one declaration gives an option's name, type, default, values and tasks; `specs(cls)` is
the command's table. The object checks itself on creation (`check_fields` in `__post_init__`), so one that exists
holds accepted values; values with a structure (`--weights 1,2`, the seg grids, `--time-limit 1h30m`, `--layers
5x7`) are parsed once there into typed values. `check` refuses, in one line naming the option and the value, a
value out of its range (NaN and infinities always; integers past what they feed, e.g. numpy seeds >= 2**32), a
choice that does not exist, and an option given where it means nothing (`--mixup` for a seg run, `--t1` without
`--loss bi_tempered`). `LAUNCH` holds the multi-GPU options of train/oof/tta. A library function that takes one of
these values checks it against the same Spec (`check_values`), so its callers are guarded by the same rule.

`validated(command)` marks the end of a command's checking phase: every option has been checked and nothing has
been created yet. It does nothing; tests replace it to stop a command there (tests/commands/test_options.py).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

from kcomp.errors import BadUsage

SEED_MAX = 2**32 - 1  # numpy's legacy and sklearn's seeds are 32-bit
MAX_SIDE = 16384  # image/patch sides in px: beyond this one uint8 RGB image alone is > 750 MB
MAX_BATCH = 65536  # torch's BatchSampler allocates a list of batch_size entries per batch
MAX_WORKERS = 256  # DataLoader/decoding processes started at once


@dataclass(frozen=True)
class Spec:
    """The values one option accepts. Bounds are inclusive unless `low_open`/`high_open`; floats must be finite.
    `only` lists the tasks (competitions, ...) the option means something for; `needs` = (what, predicate over all
    the command's values) says when it means something, e.g. ("--loss bi_tempered", lambda v: v["loss"] == ...)."""

    kind: type = float
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: Sequence[Any] | Callable[[], Sequence[Any]] | None = None
    what: str = "value"  # how a string choice is named in "--opt x: unknown <what>"
    pattern: str | None = None  # a regular expression a string must match in full, with `what` as the hint
    multiple_of: int | None = None
    only: tuple[str, ...] = ()
    needs: tuple[str, Callable[[Mapping[str, Any]], bool]] | None = None
    default: Any = None
    repeated: bool = False  # the value is a list (an option given several times), each item checked

    def check(self, name: str, value: Any) -> None:
        """Raise BadUsage naming `--name value` if the value is not accepted."""
        opt = flag(name)
        if self.kind is bool or value is None:
            return
        if self.repeated:
            if not isinstance(value, (list, tuple)):
                raise BadUsage(f"{opt} {value!r}: expected a list")
            for item in value:
                replace(self, repeated=False).check(name, item)
            return
        if self.kind in (int, float):
            self._number(opt, value)
        elif not isinstance(value, str):
            raise BadUsage(f"{opt} {value!r}: expected text")
        if self.choices is not None:
            choices = list(self.choices() if callable(self.choices) else self.choices)
            if value not in choices:
                if self.kind is str:
                    raise BadUsage(f"{opt} {value}: unknown {self.what}; choose one of: {', '.join(choices)}")
                raise BadUsage(f"{opt} {value}: expected {_either(choices)}")
        if self.pattern is not None and not re.fullmatch(self.pattern, value):
            raise BadUsage(f"{opt} {value}: expected {self.what}")

    def _number(self, opt: str, value: Any) -> None:
        integral = self.kind is int
        if isinstance(value, bool) or not isinstance(value, int if integral else (int, float)):
            raise BadUsage(f"{opt} {value!r}: expected {'an integer' if integral else 'a number'}")
        if not integral and not math.isfinite(value):
            raise BadUsage(f"{opt} {value}: expected a finite number")
        low_ok = self.low is None or (value > self.low if self.low_open else value >= self.low)
        high_ok = self.high is None or (value < self.high if self.high_open else value <= self.high)
        if not (low_ok and high_ok):
            raise BadUsage(f"{opt} {value}: must be {self.describe_range(too_low=not low_ok)}")
        if self.multiple_of and value % self.multiple_of:
            raise BadUsage(f"{opt} {value}: must be a multiple of {self.multiple_of}")

    def describe_range(self, too_low: bool = True) -> str:
        """Integers name the bound they crossed; floats their interval (whose ends may be open)."""
        lo, hi = _num(self.low), _num(self.high)
        if self.kind is int or self.low is None or self.high is None:
            if too_low and self.low is not None:
                return "positive" if self.low == 0 and self.low_open else \
                    f"{'greater than' if self.low_open else 'at least'} {lo}"
            return f"{'less than' if self.high_open else 'at most'} {hi}"
        return f"in {'(' if self.low_open else '['}{lo}, {hi}{')' if self.high_open else ']'}"


def Int(low: int | None = None, high: int | None = None, **kw: Any) -> Spec:
    return Spec(int, low, high, **kw)


def Float(low: float | None = None, high: float | None = None, **kw: Any) -> Spec:
    return Spec(float, low, high, **kw)


def Choice(choices: Sequence[Any] | Callable[[], Sequence[Any]], **kw: Any) -> Spec:
    return Spec(kw.pop("kind", str), choices=choices, **kw)


def Text(**kw: Any) -> Spec:
    return Spec(str, **kw)


def Flag(**kw: Any) -> Spec:
    return Spec(bool, **kw)


def option(spec: Spec, default: Any = None) -> Any:
    """A field of a typed options dataclass, its Spec in the field's metadata: the field's name is the option's (the
    flag with dashes), its annotation the type, `default` the default, and the Spec what it accepts and where it
    applies. The Spec judges the value as given on the command line and stored in a run's config.json; a field may
    hold it parsed (`--layers 5x7` as `Layers(5, 7)`)."""
    return field(default=default, metadata={"spec": spec})


def specs(cls: type) -> dict[str, Spec]:
    """The option table of a typed options dataclass, in field order."""
    return {f.name: f.metadata["spec"] for f in fields(cls) if "spec" in f.metadata}


def check_fields(opts: Any, *, given: Iterable[str] | None = None,
                 context: tuple[str, str] | None = None) -> dict[str, Any]:
    """`check` over the fields of a typed options object that carry a Spec (its `__post_init__` calls this, so an
    object that exists holds accepted values); returns them with each unset one at its Spec's default."""
    table = specs(type(opts))
    return check({k: getattr(opts, k) for k in table}, table, given=given, context=context)


def given(opts: Any) -> dict[str, Any]:
    """The options of a typed options object that were set (`is_given`), by name: the keywords a library function
    declaring the options it reads (a preset's `prep`, a task's `tune_thresholds`) is called with."""
    return {k: v for k in specs(type(opts)) if is_given(v := getattr(opts, k))}


def check_values(table: Mapping[str, Spec], **values: Any) -> None:
    """The library side of an option table: each value checked against the command's own Spec (range, choices),
    so a function called without the command is held to the same rule with the same message. Where an option
    applies is the command's business and is not judged here."""
    for name, value in values.items():
        table[name].check(name, value)


SEED = Int(0, SEED_MAX)
WORKERS = Int(0, MAX_WORKERS)
BATCH = Int(1, MAX_BATCH)
TTA = Choice((1, 2, 4, 8), kind=int)
CACHE_SIZE = Int(16, 4096)  # prep --size: the side of a preset's cached images
DEVICE = Text(pattern=r"auto|cpu|cuda(:\d+)?", what="auto, cpu, cuda or cuda:N")

# The multi-GPU options of train, oof and tta (kcomp.runtime.launch re-runs the command under torchrun).
LAUNCH: dict[str, Spec] = {
    "gpus": Int(1, 1024),
    "nodes": Int(1, 65536),
    "node_rank": Int(0, 65535),
    "master_addr": Text(),
    "master_port": Int(1, 65535),
}


def lazy(module: str, name: str) -> Callable[[], Sequence[Any]]:
    """Choices that live with the code using them, imported only when an option is checked."""

    def get() -> Sequence[Any]:
        import importlib

        return getattr(importlib.import_module(module), name)

    return get


# The values the losses take: train's options (with the tasks they apply to) and kcomp.models.losses check them.
LOSS: dict[str, Spec] = {
    "loss": Choice(lazy("kcomp.models.losses", "LOSSES"), what="loss"),
    "seg_loss": Choice(lazy("kcomp.models.losses", "SEG_LOSSES"), what="seg loss"),
    "smoothing": Float(0, 1, high_open=True),
    "t1": Float(0, 2, high_open=True),  # t1 < 1 bounds the loss
    "t2": Float(0, 10, low_open=True),  # t2 >~ 50 overflows the gradient
    "taylor_n": Int(1, 32),  # terms of the series, one pass over the batch each
    "distill_alpha": Float(0, 1),  # the teacher's share of the loss
    # the loss clamps a teacher's probabilities at 1e-12: at T = 100 their log-probabilities over T span at most 0.28,
    # near-uniform targets; beyond, the soft targets carry almost nothing while T^2 keeps growing the loss
    "distill_temperature": Float(0, 100, low_open=True),
}

# Elements of the comma-separated list options.
WEIGHT = Float(0)
THRESHOLD = Float(0, 1)
MIN_SIZE = Int(0)


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def is_given(value: Any) -> bool:
    """An option counts as given when it is set; a flag (bool) only when it is on."""
    return value is not None and value is not False


def check(values: Mapping[str, Any], specs: Mapping[str, Spec], *, given: Iterable[str] | None = None,
          context: tuple[str, str] | None = None) -> dict[str, Any]:
    """Check every value against its spec, then refuse given options that mean nothing here (`context` = e.g.
    ("task", "seg") for `Spec.only`; `given` = the names the user set, by default those not None/False).
    Returns the values with each unset one replaced by its spec's default."""
    unknown = sorted(set(values) - set(specs))
    if unknown:
        raise BadUsage(f"unknown option(s): {', '.join(map(flag, unknown))}")
    for name, value in values.items():
        specs[name].check(name, value)
    full = {k: (specs[k].default if v is None else v) for k, v in values.items()}
    for name in values if given is None else given:
        spec, value = specs[name], values[name]
        if not is_given(value):
            continue
        if spec.only and context is not None and context[1] not in spec.only:
            raise BadUsage(f"{flag(name)} does not apply to {context[0]} {context[1]} "
                           f"(only to {', '.join(spec.only)})")
        if spec.needs is not None and not spec.needs[1](full):
            raise BadUsage(f"{_shown(name, value)} applies only with {spec.needs[0]}")
    return full


def parse_list(name: str, text: str, spec: Spec) -> list[Any]:
    """`--name 1,2.5,3` -> numbers of `spec.kind`, each checked against `spec`."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    try:
        if not items:
            raise ValueError(text)
        values = [spec.kind(t) for t in items]
    except ValueError:
        kind = "integers" if spec.kind is int else "numbers"
        raise BadUsage(f"{flag(name)} {text}: expected comma-separated {kind}, e.g. 1,2") from None
    for v in values:
        try:
            spec.check(name, v)
        except BadUsage as e:
            raise BadUsage(f"{flag(name)} {text}: {str(e).split(': ', 1)[1]} (each value)") from None
    return values


def parse_weights(text: str | None, n: int) -> tuple[float, ...] | None:
    """`--weights 1,2` (ensemble, wbf) -> (1.0, 2.0): one finite non-negative weight per input file, not all zero,
    checked before any file is read."""
    if text is None:
        return None
    values = parse_list("weights", text, WEIGHT)
    if len(values) != n:
        raise BadUsage(f"--weights {text}: {len(values)} weight(s) for {n} input file(s)")
    if not any(values):
        raise BadUsage(f"--weights {text}: all weights are zero")
    return tuple(values)


class Checked:
    """Base of a command's frozen options dataclass: `check_fields` on creation, so an object that exists holds only
    accepted values."""

    def __post_init__(self) -> None:
        check_fields(self)


class Weighted(Checked):
    """Options of a command with one `--weights` number per input file (ensemble, wbf)."""

    weights: tuple[float, ...] | None

    @classmethod
    def from_cli(cls, *, weights: str | None, inputs: int, **values: Any) -> Any:
        """The options as typed on the command line (`weights` as text, for `inputs` files): every plain value is
        checked first, then the weights are parsed."""
        return replace(cls(**values), weights=parse_weights(weights, inputs))


def validated(command: str) -> None:
    """The seam between checking and doing: called once by every command after all its options are checked and
    before it creates any file. Intentionally empty; see the module docstring."""


def _either(choices: Iterable[Any]) -> str:
    items = [str(c) for c in choices]
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} or {items[-1]}"


def _num(x: float | None) -> str:
    return "" if x is None else (str(int(x)) if float(x).is_integer() and abs(x) < 2**53 else repr(x))


def _shown(name: str, value: Any) -> str:
    return flag(name) if value is True else f"{flag(name)} {value}"

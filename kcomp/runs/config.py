"""A run's configuration: the command line resolved into `TrainOptions` (library defaults, then the task's, then
the options given; None = not given), and the rule for resuming a run directory with them.

The options themselves, with what each accepts and where it applies, are the fields of
`kcomp.tasks.options.TrainOptions`; `DEFAULTS` and `SPECS` are their table (config.json keys in order).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from kcomp import options
from kcomp.errors import BadUsage, ConfigMismatch
from kcomp.tasks.options import DEFAULTS, LEGACY, SPECS, TASK_DEFAULTS, TASK_NAMES, TrainOptions, canonical

__all__ = ["DEFAULTS", "LEGACY", "RUNTIME_KEYS", "SPECS", "TrainOptions", "differences", "require_same", "resolve",
           "settle_pretrained"]

RUNTIME_KEYS = frozenset({"device", "workers", "compile", "save_every", "log_every", "gpus", "nodes"})
# Options naming files train reads: recorded as absolute paths, so a resume from another directory reads the same.
FILES = ("folds", "drop", "relabel", "teacher", "extra")


def resolve(**overrides: Any) -> TrainOptions:
    """The options of `kcomp train`, checked before anything is created: every value in range, every option the
    user gave meaningful for the task, then what ties options together. An unset flag (False where the default is
    False) counts as not given, like None."""
    unknown = sorted(set(overrides) - set(DEFAULTS))
    if unknown:
        raise BadUsage(f"unknown training option(s): {', '.join(unknown)}")
    given = {k: v for k, v in overrides.items() if v is not None and not (v is False and DEFAULTS[k] is False)}
    task = given.get("task", DEFAULTS["task"])
    if task not in TASK_NAMES:  # first: every other option is judged against the task
        raise BadUsage(f"unknown task {task!r}; choose one of: {', '.join(TASK_NAMES)}")
    values = {**DEFAULTS, **TASK_DEFAULTS.get(task, {}), **given}
    options.check(values, SPECS, given=given, context=("task", task))
    _check_together(values)
    if values["weights"] and values["pretrained"] is None:
        values["pretrained"] = False  # --weights: a local file instead of the hub's weights
    return TrainOptions(**{**values, **{k: _absolute(k, values[k]) for k in FILES if values[k]}})


def _absolute(key: str, value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_absolute(key, v) for v in value]
    if str(value) == "-":
        raise BadUsage(f"--{key} -: train records the files it reads in config.json to resume; give a file")
    return str(Path(value).resolve())


def settle_pretrained(opts: TrainOptions, competition: str | None) -> TrainOptions:
    """`pretrained` left unset becomes the default of the data's competition preset: True, except where the preset
    says it trains from scratch (the demo: its quick start must run without network), which is logged. A
    `--pretrained-tag` asks for pretrained weights by itself: it would mean nothing on random ones."""
    if opts.pretrained is not None:
        return opts
    pretrained = True
    if competition and not opts.pretrained_tag:
        from kcomp.competitions import get_competition, list_competitions

        if competition in list_competitions():
            pretrained = bool(getattr(get_competition(competition), "pretrained", True))
    if not pretrained:
        from kcomp import console

        console.log(f"{competition}: training from random weights, the {competition} preset's default "
                    f"(--pretrained starts from the hub's pretrained weights)")
    return replace(opts, pretrained=pretrained)


def _check_together(cfg: dict[str, Any]) -> None:
    """What ties options: values each in range that make no sense together."""
    if cfg["lr"] * cfg["weight_decay"] >= 1:  # AdamW multiplies every weight by 1 - lr * wd each step
        raise BadUsage(f"--weight-decay {cfg['weight_decay']}: with --lr {cfg['lr']} it would zero or flip every "
                       f"weight each step (lr x weight decay must be < 1)")
    if cfg["pretrained"] is True and cfg["weights"]:  # before --weights settles an unset --pretrained
        raise BadUsage(f"--pretrained with --weights {cfg['weights']}: both name the starting weights; --weights "
                       f"loads the local file instead of the hub's, so give one of the two")
    if cfg["warmup_epochs"] > cfg["epochs"]:
        raise BadUsage(f"--warmup-epochs {cfg['warmup_epochs']}: longer than --epochs {cfg['epochs']}")
    if cfg["teacher"] and cfg["distill_alpha"] is None:
        raise BadUsage("--teacher needs --distill-alpha A: the teacher's share of the loss, in [0, 1]")
    if cfg["metric"] is not None:
        from kcomp.tasks import get_task

        metrics = get_task(cfg["task"]).metrics
        if cfg["metric"] not in metrics:
            raise BadUsage(f"--metric {cfg['metric']}: unknown metric for task {cfg['task']}; choose one of: "
                           f"{', '.join(metrics)}")


def differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Keys that change what a run computes; runtime keys are free to differ on resume. A key the saved run does
    not know (a newer kcomp added it) counts as what kcomp did before it (`LEGACY`, else its default), so upgrading
    kcomp does not orphan runs."""
    keys = (set(saved) | set(current)) - RUNTIME_KEYS

    def value(cfg: dict[str, Any], k: str, before: dict[str, Any]) -> Any:
        return canonical(k, cfg.get(k, before.get(k, DEFAULTS.get(k))))

    return sorted(k for k in keys if value(saved, k, LEGACY) != value(current, k, {}))


def require_same(saved: dict[str, Any], current: dict[str, Any], where: str) -> None:
    diff = differences(saved, current)
    if diff:
        shown = "; ".join(f"{k}: {saved.get(k, LEGACY.get(k))!r} -> {current.get(k)!r}" for k in diff[:6])
        raise ConfigMismatch(f"run was started with other options ({shown}); use another -o RUN or the same options",
                             path=where)

"""`TrainOptions`: what `kcomp train` was asked, typed, from the command line to the tasks and back into a run's
config.json.

Each option is one field declared with `kcomp.options.option`: its name, type, default, the values it accepts and the
tasks it applies to, in one place; `kcomp.runs.config.resolve` builds the object from the command line (task
defaults under it, every value checked before anything is created) and a run directory's config.json gives it back
(`from_config`). Values with a structure are parsed once, here: `--layers 5x7` is `Layers(5, 7)` in the object and
stays "5x7" on disk (`to_config` writes exactly the keys and JSON values kcomp always wrote, so earlier runs
resume). The options are frozen: a task reads them and never writes to them.

Adding a training option: a field here (with its Spec: range, `only` = the tasks it applies to, `needs` = the
option it depends on; a default that matches what runs trained before it computed, since their config.json lacks
the key), a `typer.Option` of the same name in `commands/train.py`, and the code that reads `opts.<name>`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any, NamedTuple

from kcomp import options
from kcomp.tasks import task_names
from kcomp.options import LOSS, MAX_BATCH, MAX_SIDE, TTA, Choice, Flag, Float, Int, Text, lazy, option

TASK_NAMES = tuple(task_names())  # the registered tasks, in the order help lists them
CLS, INK, NOT_INK = ("cls",), ("ink",), ("cls", "seg", "det")
# Where a task's sensible default differs (applied under the command line): a seg batch costs several times a
# classifier's at the same size, and short runs on small data need optimizer steps more than large batches.
TASK_DEFAULTS: dict[str, dict[str, Any]] = {"seg": {"batch_size": 8}}


class Layers(NamedTuple):
    """`--layers GxL`: G groups of L consecutive layers of an ink stack."""

    groups: int
    per_group: int

    def __str__(self) -> str:
        return f"{self.groups}x{self.per_group}"

    @classmethod
    def parse(cls, text: str) -> Layers:
        from kcomp.models.ink import parse_layers

        return cls(*parse_layers(text))


def _loss(name: str) -> tuple[str, Any]:
    return f"--loss {name}", lambda v: v["loss"] == name


def _given(name: str) -> tuple[str, Any]:
    return f"--{name.replace('_', '-')}", lambda v: bool(v[name])


def _sched(*names: str) -> tuple[str, Any]:
    return f"--sched {' or '.join(names)}", lambda v: v["sched"] in names


def _optimizers() -> list[str]:
    from kcomp.models.optim import optimizer_names

    return optimizer_names()


def _takes_momentum(name: str) -> bool:
    from kcomp.models.optim import takes_momentum

    return takes_momentum(name)


def _from_hub(v: Mapping[str, Any]) -> bool:
    return v["pretrained"] is not False and not v["weights"]


def _only(spec: options.Spec, tasks: tuple[str, ...], needs: tuple[str, Any] | None = None) -> options.Spec:
    return replace(spec, only=tasks, needs=needs)


@dataclass(frozen=True)
class TrainOptions:
    """The options of one training run. Field order is config.json's key order; upper bounds are where a value
    stops meaning anything or overflows what it feeds."""

    task: str = option(Choice(TASK_NAMES, what="task"), "cls")
    folds: str | None = option(Text())  # the folds file, an absolute path
    target: str | None = option(Text(only=CLS))
    model: str = option(Text(), "resnet18")
    img_size: int = option(Int(1, MAX_SIDE, only=NOT_INK), 224)  # ink: --patch
    epochs: int = option(Int(1, 100_000), 10)
    batch_size: int = option(Int(1, MAX_BATCH), 32)
    lr: float = option(Float(0, 1, low_open=True), 1e-3)  # AdamW moves each weight by about lr per step
    weight_decay: float = option(Float(0), 0.05)
    warmup_epochs: float = option(Float(0), 1.0)
    min_lr_ratio: float = option(Float(0, 1), 0.01)
    # optimisation (kcomp.models.optim): timm's optimizers and schedules, layer-wise LR decay, SAM, gradient clipping
    opt: str = option(Choice(_optimizers, what="optimizer (timm's)"), "adamw")
    momentum: float = option(Float(0, 1, high_open=True, needs=("--opt sgd (an optimizer with momentum)",
                                                                lambda v: _takes_momentum(v["opt"]))), 0.9)
    sched: str = option(Choice(lazy("kcomp.models.optim", "SCHEDULES"), what="schedule"), "cosine")
    decay_epochs: float | None = option(Float(0, 100_000, low_open=True, needs=_sched("step", "wsd")))
    decay_rate: float = option(Float(0, 1, low_open=True, needs=_sched("step", "plateau")), 0.1)
    plateau_patience: int = option(Int(0, 100_000, needs=_sched("plateau")), 2)
    layer_decay: float | None = option(Float(0, 1, low_open=True))
    sam: bool = option(Flag(), False)
    sam_rho: float = option(Float(0, 10, low_open=True, needs=_given("sam")), 0.05)
    clip_grad: float | None = option(Float(0, low_open=True))
    clip_mode: str = option(Choice(lazy("kcomp.models.optim", "CLIP_MODES"), what="clip mode",
                                   needs=_given("clip_grad")), "norm")
    accum: int = option(Int(1, MAX_BATCH), 1)
    loss: str = option(_only(LOSS["loss"], CLS), "ce")
    smoothing: float = option(_only(LOSS["smoothing"], ("cls", "seg", "ink")), 0.0)
    t1: float = option(_only(LOSS["t1"], CLS, _loss("bi_tempered")), 0.8)
    t2: float = option(_only(LOSS["t2"], CLS, _loss("bi_tempered")), 1.4)
    taylor_n: int = option(_only(LOSS["taylor_n"], CLS, _loss("taylor")), 2)
    mixup: float = option(Float(0, only=CLS), 0.0)
    cutmix: float = option(Float(0, only=CLS), 0.0)
    mix_prob: float = option(Float(0, 1, only=CLS, needs=("--mixup or --cutmix",
                                                          lambda v: bool(v["mixup"] or v["cutmix"]))), 1.0)
    ema: float = option(Float(0, 1, high_open=True), 0.0)
    aug: str = option(Choice(lazy("kcomp.data.transforms", "AUG_LEVELS"), what="augmentation level",
                             only=NOT_INK), "medium")
    drop_rate: float = option(Float(0, 1, high_open=True, only=("cls", "ink")), 0.0)
    drop_path: float = option(Float(0, 1, high_open=True, only=("cls", "ink")), 0.0)
    weights: str | None = option(Text())
    metric: str | None = option(Text())  # checked against the task's metrics by kcomp.runs.config.resolve
    val_tta: int = option(TTA, 1)
    arch: str = option(Text(only=("seg",)), "unet")  # smp's names, checked when the model is built
    seg_loss: str = option(_only(LOSS["seg_loss"], ("seg",)), "bce_dice")
    layers: Layers = option(Text(pattern=r"\d+x\d+", what="GROUPSxLAYERS, e.g. 5x7", only=INK), Layers(5, 7))
    layer_start: int | None = option(Int(0, MAX_SIDE, only=INK))
    patch: int = option(Int(32, MAX_SIDE, multiple_of=32, only=INK), 224)  # the encoder's stride
    stride: int | None = option(Int(1, MAX_SIDE, only=INK))
    layer_shift: int = option(Int(0, MAX_SIDE, only=INK), 2)
    neg_fraction: float = option(Float(0, 1, only=INK), 1.0)
    infer_stride: int | None = option(Int(1, MAX_SIDE, only=INK))
    seed: int = option(options.SEED, 42)
    deterministic: bool = option(Flag(), False)
    amp: str = option(Choice(("auto", "bf16", "fp16", "off"), what="precision"), "auto")
    channels_last: bool = option(Flag(), True)
    sync_bn: bool = option(Flag(), False)  # BatchNorm statistics over all ranks' batches (DDP on CUDA only)
    # below: how to run, not what to compute; they may change between a run and its resume (RUNTIME_KEYS)
    device: str = option(options.DEVICE, "auto")
    workers: int | None = option(options.WORKERS)  # None: kcomp.runtime.device.resolve_workers decides
    compile: bool = option(Flag(), False)
    save_every: int = option(Int(0), 0)
    log_every: int = option(Int(0), 50)
    # data-parallel processes per node and nodes (`--gpus`, `--nodes`): recorded, but free to differ between
    # folds; a fold's last.pt records its world size and resumes only with the same one (the global batch)
    gpus: int = option(options.LAUNCH["gpus"], 1)
    nodes: int = option(options.LAUNCH["nodes"], 1)
    # load --weights even when they fill less than MIN_WEIGHTS_SHARE of the model
    weights_partial: bool = option(Flag(needs=_given("weights")), False)
    # the data-centric options (kcomp.data.training_rows): training rows only, validation rows never change
    drop: str | None = option(Text(only=CLS))  # label issues (`kcomp clean`) left out of training
    relabel: str | None = option(Text(only=CLS))  # label issues trained on their suggested label
    extra: tuple[str, ...] = option(Text(repeated=True), ())  # pseudo-labelled rows (`kcomp pseudo`) added
    teacher: str | None = option(Text(only=CLS))  # cls OOF predictions to distil (kcomp.models.losses)
    distill_alpha: float | None = option(_only(LOSS["distill_alpha"], CLS, _given("teacher")))
    distill_temperature: float = option(_only(LOSS["distill_temperature"], CLS, _given("teacher")), 1.0)
    # None: pretrained unless --weights names a local file or the data's preset trains from scratch (demo); settled
    # to True/False before anything is built (`kcomp.runs.config.settle_pretrained`) and recorded so
    pretrained: bool | None = option(Flag())
    # a timm tag (cls, ink, seg tu- encoders: a1_in1k) or smp's name of an encoder's weights (seg: imagenet, ssl)
    pretrained_tag: str | None = option(Text(pattern=r"\.?[A-Za-z0-9_]+", what="a pretrained tag, e.g. a1_in1k",
                                             only=("cls", "seg", "ink"),
                                             needs=("--pretrained (not --weights)", _from_hub)))
    # what trains and for how long (kcomp.runs.freeze, kcomp.runs.stopping, kcomp.data.sampler); off by default, as
    # runs trained before them computed
    freeze_bn: bool = option(Flag(), False)  # BatchNorm statistics and affine parameters kept as they start
    freeze_epochs: int = option(Int(0, 100_000), 0)  # the first N epochs train the head only
    patience: int = option(Int(0, 100_000), 0)  # stop after N epochs without a better validation score; 0 = off
    class_weights: str | None = option(Choice(("balanced",), what="class weighting", only=CLS,
                                              needs=("--loss ce", lambda v: v["loss"] == "ce")))
    sampler: str | None = option(Choice(("balanced",), what="sampler", only=CLS))  # None: a shuffle per epoch
    grad_checkpointing: bool = option(Flag(), False)  # timm's: activations recomputed in backward, less memory

    def __post_init__(self) -> None:
        """Structured values parsed (from their text, as the command line and config.json give them), then every
        value checked against its Spec: a TrainOptions holds only accepted values."""
        if isinstance(self.layers, str):
            object.__setattr__(self, "layers", Layers.parse(self.layers))
        if not isinstance(self.extra, tuple):
            object.__setattr__(self, "extra", tuple(self.extra))
        options.check(self.to_config(), SPECS, given=())

    def to_config(self) -> dict[str, Any]:
        """The options as config.json and checkpoints store them: every field in order, `layers` as its GxL text,
        `extra` as a list."""
        return {f.name: _stored(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_config(cls, saved: Mapping[str, Any]) -> TrainOptions:
        """The options a run was trained with, from its config.json or a checkpoint: keys an earlier kcomp did not
        write take what it computed (`LEGACY`, else their default), keys of a later one are not read."""
        return cls(**{**LEGACY, **{k: v for k, v in saved.items() if k in SPECS}})

    @property
    def distilled(self) -> bool:
        return self.teacher is not None


def _stored(value: Any) -> Any:
    if isinstance(value, Layers):
        return str(value)
    return list(value) if isinstance(value, tuple) else value


SPECS = options.specs(TrainOptions)
DEFAULTS = {f.name: _stored(f.default) for f in fields(TrainOptions)}
# What runs started before a key existed did, where that differs from its default: they started from random
# weights (or --weights), never from the hub.
LEGACY: dict[str, Any] = {"pretrained": False}


def canonical(key: str, value: Any) -> Any:
    """A stored value as the options hold it, so that texts that parse alike compare alike ("05x7" and "5x7")."""
    if key == "layers" and isinstance(value, str):
        from kcomp.errors import BadUsage

        try:
            return Layers.parse(value)
        except BadUsage:  # an unparseable saved value compares as its text
            return value
    return value

"""Typed options (issue 26 part 3): `TrainOptions` declares every training option once (name, type, default, values,
tasks), parses structured values at the boundary, and writes config.json exactly as kcomp always did; the library's
checks of option values are the commands' own Specs."""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing

import pytest

from kcomp.errors import BadUsage
from kcomp.runs import config
from kcomp.tasks.options import Layers, TrainOptions

# config.json's "config" of a default cls run as kcomp wrote it before the options were typed: keys in this order,
# these JSON values. A run directory holding it must resume, so the writer keeps both; keys added since come after.
WRITTEN_BEFORE = {
    "task": "cls", "folds": None, "target": None, "model": "resnet18", "img_size": 224, "epochs": 10,
    "batch_size": 32, "lr": 1e-3, "weight_decay": 0.05, "warmup_epochs": 1.0, "min_lr_ratio": 0.01, "accum": 1,
    "loss": "ce", "smoothing": 0.0, "t1": 0.8, "t2": 1.4, "taylor_n": 2, "mixup": 0.0, "cutmix": 0.0,
    "mix_prob": 1.0, "ema": 0.0, "aug": "medium", "drop_rate": 0.0, "drop_path": 0.0, "weights": None,
    "metric": None, "val_tta": 1, "arch": "unet", "seg_loss": "bce_dice", "layers": "5x7", "layer_start": None,
    "patch": 224, "stride": None, "layer_shift": 2, "neg_fraction": 1.0, "infer_stride": None, "seed": 42,
    "deterministic": False, "amp": "auto", "channels_last": True, "sync_bn": False, "device": "auto", "workers": 2,
    "compile": False, "save_every": 0, "log_every": 50, "gpus": 1, "nodes": 1, "weights_partial": False,
}
ADDED = {"drop": None, "relabel": None, "extra": [], "teacher": None, "distill_alpha": None,
         "distill_temperature": 1.0, "pretrained": None, "pretrained_tag": None, "freeze_bn": False,
         "freeze_epochs": 0, "patience": 0, "class_weights": None, "sampler": None, "grad_checkpointing": False}
# The optimisation block (kcomp.models.optim), declared beside the learning-rate options: what runs computed before it.
OPTIM = {"opt": "adamw", "momentum": 0.9, "sched": "cosine", "decay_epochs": None, "decay_rate": 0.1,
         "plateau_patience": 2, "layer_decay": None, "sam": False, "sam_rho": 0.05, "clip_grad": None,
         "clip_mode": "norm"}
# Training options without a flag of their own: library callers set them.
LIBRARY_ONLY = {"min_lr_ratio", "log_every", "infer_stride"}


def test_config_json_keeps_its_keys_order_and_values() -> None:
    import json

    written = config.resolve(folds="f.parquet").to_config()
    # workers (how to run, free to differ on resume) defaults to null since the GPU work: the device decides
    now = {**WRITTEN_BEFORE, "workers": None}
    at = list(now).index("min_lr_ratio") + 1
    now = dict([*list(now.items())[:at], *OPTIM.items(), *list(now.items())[at:]])
    assert json.dumps(written) == json.dumps({**now, "folds": written["folds"], **ADDED})
    assert config.DEFAULTS == {**now, **ADDED}


def test_layers_are_parsed_once_and_stored_as_text() -> None:
    opts = config.resolve(task="ink", folds="f.parquet", layers="3x5")
    assert opts.layers == Layers(3, 5) and opts.layers.groups == 3 and opts.layers.per_group == 5
    stored = opts.to_config()
    assert stored["layers"] == "3x5"
    assert TrainOptions.from_config(stored) == opts
    with pytest.raises(BadUsage, match=r"--layers 0x7: groups and layers must be at least 1"):
        config.resolve(task="ink", layers="0x7")  # at the boundary, before any index is read
    # texts that parse alike do not block a resume
    assert config.differences({**stored, "layers": "03x05"}, stored) == []


def test_from_config_reads_earlier_and_later_runs() -> None:
    earlier = dict(WRITTEN_BEFORE, task="seg", folds="/data/folds.parquet", batch_size=8)
    opts = TrainOptions.from_config(earlier)
    assert (opts.task, opts.batch_size, opts.extra, opts.teacher) == ("seg", 8, (), None)
    assert opts.pretrained is False  # LEGACY: runs before --pretrained started from random weights
    later = {**earlier, "an_option_of_a_later_kcomp": 3}
    assert TrainOptions.from_config(later) == opts
    assert config.differences(earlier, opts.to_config()) == []  # the keys added since count as their defaults


def test_options_are_frozen_and_hold_only_accepted_values() -> None:
    opts = TrainOptions()
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.lr = 0.1  # type: ignore[misc]
    with pytest.raises(BadUsage, match=r"--lr 0: must be in \(0, 1\]"):
        TrainOptions(lr=0)
    with pytest.raises(BadUsage, match=r"--extra 3: expected text"):
        TrainOptions(extra=("a.parquet", 3))
    assert dataclasses.replace(opts, lr=0.1).lr == 0.1


def _annotation_kind(hint: object) -> type:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    if typing.get_origin(hint) is tuple:  # repeated: tuple[str, ...]
        hint = typing.get_args(hint)[0]
    return str if hint is Layers else hint


def test_each_field_is_typed_as_its_spec_checks_it() -> None:
    hints = typing.get_type_hints(TrainOptions)
    for name, spec in config.SPECS.items():
        assert _annotation_kind(hints[name]) is spec.kind, name
        assert spec.repeated == (typing.get_origin(hints[name]) is tuple), name


def test_every_training_option_has_its_flag_in_the_train_command() -> None:
    """Adding an option is a field plus a typer.Option of the same name; the command passes them by name."""
    from kcomp.commands.train import command

    params = set(inspect.signature(command).parameters) | {"compile"}  # --compile is `compile_model`
    assert set(config.SPECS) - params == LIBRARY_ONLY


# ----------------------------------------------------------------------- library functions hold the same rules


def test_library_functions_check_values_with_the_commands_specs(tmp_path) -> None:
    import numpy as np

    from kcomp.artifacts.boxes import Boxes
    from kcomp.data.image_cache import add_image_cache
    from kcomp.models.losses import build_distillation, build_loss, build_seg_loss
    from kcomp.post.ensemble import combine
    from kcomp.post.stack import stack
    from kcomp.post.wbf import fuse_boxes

    cases = [
        (lambda: build_loss("ce", smoothing=1.5), r"--smoothing 1\.5: must be in \[0, 1\)"),
        (lambda: build_loss("focal"), r"--loss focal: unknown loss"),
        (lambda: build_loss("bi_tempered", t1=2.5), r"--t1 2\.5: must be in \[0, 2\)"),
        (lambda: build_loss("taylor", taylor_n=0), r"--taylor-n 0: must be at least 1"),
        (lambda: build_seg_loss("ce"), r"--seg-loss ce: unknown seg loss"),
        (lambda: build_distillation(lambda a, b: a, alpha=1.5), r"--distill-alpha 1\.5: must be in \[0, 1\]"),
        (lambda: build_distillation(lambda a, b: a, alpha=0.5, temperature=0.0),
         r"--distill-temperature 0\.0: must be in \(0, 100\]"),
        (lambda: fuse_boxes([Boxes.empty(1)], np.ones(1), np.ones(1), iou_thr=0.0), r"--iou 0\.0: must be in"),
        (lambda: fuse_boxes([Boxes.empty(1)], np.ones(1), np.ones(1), method="vote"), r"--method vote: unknown"),
        (lambda: stack([np.eye(2)], np.arange(2), [np.eye(2)], n_splits=1), r"--folds 1: must be at least 2"),
        (lambda: combine([np.eye(2)], method="power", power=0.0), r"--power 0\.0: must be in \(0, 64\]"),
        (lambda: add_image_cache(None, tmp_path, tmp_path, 8, 0), r"--size 8: must be at least 16"),
    ]
    for call, message in cases:
        with pytest.raises(BadUsage, match=message):
            call()

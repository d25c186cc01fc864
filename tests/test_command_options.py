"""The typed options of the commands other than train/oof/tta (issue 26): each command builds one frozen
dataclass at its boundary, every value checked on creation with the messages the commands always printed, and the
values with a structure (comma lists) parsed once into typed values there."""

from __future__ import annotations

import dataclasses

import pytest

from kcomp.errors import BadUsage
from kcomp.post.ensemble import EnsembleOptions
from kcomp.post.wbf import WbfOptions


def _round_trip(opts: object) -> None:
    """An options object is rebuilt from its own fields unchanged (a checked value stays accepted)."""
    fields = {f.name: getattr(opts, f.name) for f in dataclasses.fields(opts)}  # type: ignore[arg-type]
    assert type(opts)(**fields) == opts
    assert dataclasses.replace(opts) == opts  # type: ignore[type-var]
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.__setattr__(dataclasses.fields(opts)[0].name, None)  # type: ignore[arg-type]


def test_wbf_options_parse_weights_once() -> None:
    opts = WbfOptions.from_cli(weights="1, 2.5", inputs=2, method="soft_nms", skip_box_thr=0.2)
    assert opts.weights == (1.0, 2.5) and opts.box_thr == 0.2
    assert WbfOptions().box_thr == 0.01 and WbfOptions().weights is None
    _round_trip(opts)
    _round_trip(WbfOptions(method="nms"))  # skip_box_thr stays unset, so nms rebuilds without complaint


@pytest.mark.parametrize(("kw", "message"), [
    ({"weights": "1,x", "inputs": 2}, "--weights 1,x: expected comma-separated numbers, e.g. 1,2"),
    ({"weights": "1,-1", "inputs": 2}, "--weights 1,-1: must be at least 0 (each value)"),
    ({"weights": "1,2,3", "inputs": 2}, "--weights 1,2,3: 3 weight(s) for 2 input file(s)"),
    ({"weights": "0,0", "inputs": 2}, "--weights 0,0: all weights are zero"),
    ({"weights": None, "inputs": 1, "iou": 0.0}, "--iou 0.0: must be in (0, 1]"),
    ({"weights": None, "inputs": 1, "method": "nms", "skip_box_thr": 0.1},
     "--skip-box-thr 0.1 applies only with --method wbf or soft_nms"),
    ({"weights": None, "inputs": 1, "method": "vote"}, "--method vote: unknown fusion method"),
])
def test_wbf_options_refuse_with_the_commands_messages(kw: dict, message: str) -> None:
    with pytest.raises(BadUsage) as e:
        WbfOptions.from_cli(**kw)
    assert str(e.value).startswith(message)


def test_ensemble_options_parse_weights_once() -> None:
    opts = EnsembleOptions.from_cli(weights="1,3", inputs=2, method="power", power=3.0)
    assert opts.weights == (1.0, 3.0) and opts.exponent == 3.0
    assert EnsembleOptions(method="power").exponent == 2.0
    _round_trip(opts)
    with pytest.raises(BadUsage, match=r"^--power 3.0 applies only with --method power$"):
        EnsembleOptions(power=3.0)
    with pytest.raises(BadUsage, match=r"^--weights 1: 1 weight\(s\) for 2 input file\(s\)$"):
        EnsembleOptions.from_cli(weights="1", inputs=2)
    with pytest.raises(BadUsage, match=r"^--weights -1.0: must be at least 0$"):  # a library caller's tuple
        EnsembleOptions(weights=(-1.0,))


def test_tune_options_parse_the_grids_once() -> None:
    from kcomp.options import given
    from kcomp.post.tuned import TuneOptions

    opts = TuneOptions.from_cli(None, "0.3, 0.5", "0,100", None)
    assert opts.thresholds == (0.3, 0.5) and opts.min_sizes == (0, 100) and opts.tops is None
    assert given(opts) == {"thresholds": (0.3, 0.5), "min_sizes": (0, 100)}  # what the task's tuner is called with
    _round_trip(opts)
    opts.check_task("seg")
    with pytest.raises(BadUsage, match=r"^--thresholds does not apply to task ink \(only to seg\)$"):
        opts.check_task("ink")
    with pytest.raises(BadUsage, match=r"^--downscale 0: must be at least 1$"):  # checked before the grids
        TuneOptions.from_cli(0, "x", None, None)
    with pytest.raises(BadUsage, match=r"^--min-sizes 1.5: expected comma-separated integers, e.g. 1,2$"):
        TuneOptions.from_cli(None, None, "1.5", None)


def _plain() -> list:
    from kcomp.data.split import SplitOptions
    from kcomp.post.label_issues import CleanOptions
    from kcomp.post.stack import StackOptions
    from kcomp.report.build import ReportOptions
    from kcomp.tasks.pseudo import PseudoOptions

    return [
        (SplitOptions, {"folds": 3, "strategy": "group", "group_col": "patient"}, {"folds": 1},
         "--folds 1: must be at least 2"),
        (SplitOptions, {}, {"strategy": "random"}, "--strategy random: unknown split strategy; choose one of: auto"),
        (StackOptions, {"model": "mlp", "oof_output": "o.parquet"}, {"seed": 2**32},
         "--seed 4294967296: must be at most 4294967295"),
        (CleanOptions, {"filter_by": "both"}, {"quality": "x"}, "--quality x: unknown label quality score"),
        (ReportOptions, {"previews": 0}, {"worst": -1}, "--worst -1: must be at least 0"),
        (PseudoOptions, {"soft": True, "top_frac": 0.5}, {"top_frac": 0.0}, "--top-frac 0.0: must be in (0, 1]"),
    ]


@pytest.mark.parametrize(("cls", "good", "bad", "message"), _plain(), ids=lambda v: getattr(v, "__name__", None))
def test_plain_options_check_on_creation(cls: type, good: dict, bad: dict, message: str) -> None:
    opts = cls(**good)
    assert {k: getattr(opts, k) for k in good} == good
    _round_trip(opts)
    with pytest.raises(BadUsage) as e:
        cls(**bad)
    assert str(e.value).startswith(message)


def test_prep_and_submit_options_hand_a_preset_only_what_it_declares() -> None:
    from kcomp.competitions import PrepOptions, SubmitOptions, get_competition

    demo, siim = get_competition("demo"), get_competition("siim-covid19")
    opts = PrepOptions(seed=3, size=64)
    _round_trip(opts)
    assert opts.preset(demo, "demo") == {"seed": 3, "size": 64}  # unset ones are the preset's defaults
    with pytest.raises(BadUsage, match=r"^--bits does not apply to competition demo"):
        PrepOptions(bits=16).preset(demo, "demo")
    with pytest.raises(BadUsage, match=r"^--bits 12: expected 8 or 16$"):
        PrepOptions(bits=12)
    sub = SubmitOptions(thresholds="t.json", none_power=0.3)
    _round_trip(sub)
    assert sub.preset(siim, "siim-covid19") == {"none_power": 0.3}  # the files are the command's to read
    with pytest.raises(BadUsage, match=r"^--none-power does not apply to competition demo"):
        sub.preset(demo, "demo")


def test_pack_options_parse_the_time_limit_once() -> None:
    from kcomp.pack import PackOptions

    opts = PackOptions(time_limit="1h30m", find_links=("wheels",), test_images=100)
    assert opts.limit == 5400.0
    _round_trip(opts)
    with pytest.raises(BadUsage, match=r"^--time-limit soon: expected a positive duration such as 9h"):
        PackOptions(time_limit="soon")  # refused on creation, before pack reads or writes anything
    with pytest.raises(BadUsage, match=r"^--test-images 0: must be at least 1$"):
        PackOptions(test_images=0)


def test_preview_options_default_the_count_only_with_a_preview() -> None:
    from kcomp.report.preview import PreviewOptions

    assert PreviewOptions(preview="p").count == 8 and PreviewOptions(preview="p", preview_count=2).count == 2
    _round_trip(PreviewOptions())
    with pytest.raises(BadUsage, match=r"^--preview-count 2 applies only with --preview DIR$"):
        PreviewOptions(preview_count=2)

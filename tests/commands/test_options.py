"""Option values: every option of every command is checked before anything is created (issue 19: A, E, G).

Three parts.

1. `ROWS`: one row per cause: out-of-range seeds, sizes and worker counts; NaN and infinities; unknown choices;
   options that mean nothing for the task, competition or method; launcher layouts; `--fold all`
   with nothing to train; `--weights` of another architecture; click's own usage errors. Each row asserts the exit
   code, at most 3 stderr lines with no traceback and no "internal error", the error line, nothing on stdout, and
   that every input, any pre-existing output and the working directory are as before (sha256, inode, mtime) with
   no new file or directory: no run dir, no config.json that would refuse the corrected command.

2. `test_numeric_option_values`: generated from the CLI. It walks the click tree of `kcomp.commands.main.app`
   and, for every option annotated int or float, runs the command with 0, -1, 2**63 (and NaN for floats). Each
   value must either work or exit 2 with one line, leaving nothing behind. Run end to end that is a few hundred
   trainings and predictions, so the default test runs each command in-process (torch imported once) through the
   real entry point `run_app`, on the tiniest data, and stops it at the seam `kcomp.options.validated(command)`:
   every command calls it once all its options are checked and before it creates anything, and here it raises
   `_Stop` instead. A value that reaches it "works" as far as checking goes. Besides, every numeric option must
   have been judged by a `Spec` (recorded by wrapping `Spec.check`), so an option added later without a spec
   fails here even if none of these values crashes it. The seam is tested itself: every command's valid base
   invocation reaches it exactly once with nothing created, and without the stop goes on to write its output
   (`test_the_seam_*`). `test_numeric_option_values_end_to_end` (slow) runs the same values through a fresh
   interpreter with nothing stopped.

3. The `--weights` partial-load rule, with real state dicts of two architectures.
"""

from __future__ import annotations

import contextlib
import io
import re
import shutil
import signal
import types
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.commands.test_errors import Ctx, _existing_output, _fill, _oof_twice, _snapshot, demo_files
from tests.conftest import CliResult, run_cli

SEAM = -1  # CliResult.code of a command stopped at kcomp.options.validated
TRAIN_FAST = ("--fold", "0", "--img-size", "32", "--epochs", "1", "--workers", "0")
INK_FAST = ("--fold", "0", "--layers", "2x4", "--patch", "32", "--epochs", "1", "--batch-size", "8", "--workers", "0",
            "--no-pretrained")


class _Stop(BaseException):
    """Raised by the replaced seam; a BaseException so no `except Exception` on the way can swallow it."""


# ----------------------------------------------------------------------------------------------- in-process CLI


@contextlib.contextmanager
def _own_globals() -> Iterator[None]:
    """What `run_app` and `--quiet` change for the whole process, put back afterwards."""
    from kcomp import console
    from kcomp.commands import _common

    state, quiet = dict(_common.STATE), console.quiet()
    pipe = signal.getsignal(signal.SIGPIPE) if hasattr(signal, "SIGPIPE") else None
    try:
        yield
    finally:
        _common.STATE.update(state)
        console.set_quiet(quiet)
        if pipe is not None:
            signal.signal(signal.SIGPIPE, pipe)


def invoke(*args: str | Path) -> CliResult:
    """`kcomp --quiet ARGS` in this process through the console script's own `run_app`: exit code, stdout and
    stderr as a shell would see them (code SEAM when the test's seam stopped it)."""
    from kcomp.commands._common import run_app
    from kcomp.commands.main import app

    out, err = io.StringIO(), io.StringIO()
    code: int = 0
    with _own_globals(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            run_app(app, ["--quiet", *map(str, args)])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except _Stop:
            code = SEAM
    return CliResult(code, out.getvalue(), err.getvalue())


@pytest.fixture
def seam(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Stop every command at kcomp.options.validated; the list collects the commands that got there."""
    from kcomp import options

    reached: list[str] = []

    def stop(command: str) -> None:
        reached.append(command)
        raise _Stop(command)

    monkeypatch.setattr(options, "validated", stop)
    return reached


@pytest.fixture
def judged(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the options a Spec has judged (every call of Spec.check)."""
    from kcomp.options import Spec

    names: list[str] = []
    real = Spec.check

    def check(self: Spec, name: str, value: Any) -> None:
        names.append(name)
        real(self, name, value)

    monkeypatch.setattr(Spec, "check", check)
    return names


def _tree(roots: list[Path]) -> dict[Path, dict]:
    return {r: _snapshot(r) for r in roots}


def _one_error_line(r: CliResult, at_most: int = 3) -> str:
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert 1 <= len(lines) <= at_most, f"expected 1..{at_most} stderr lines, got:\n{r.stderr}"
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr, r.stderr
    errors = [ln for ln in lines if ln.startswith("kcomp: error: ")]
    assert errors, r.stderr
    return errors[0]


# ------------------------------------------------------------------------------------------------- small data


@pytest.fixture(scope="module")
def ink_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A two-fragment Vesuvius download with 8 layers, prepped and split in-process."""
    from tests.vesuvius_fixture import make_vesuvius_layout

    from kcomp import options

    root = tmp_path_factory.mktemp("ink")
    raw = make_vesuvius_layout(root / "raw", fragments={"1": (128, 96), "2": (160, 96)}, n_layers=8)
    stop, options.validated = options.validated, lambda command: None  # first requested under a stopping seam
    try:
        for args in (("prep", "vesuvius", raw, "-o", root / "data"),
                     ("split", root / "data" / "index.parquet", "-o", root / "folds.parquet", "--folds", "2")):
            r = invoke(*args)
            assert r.code == 0, r.stderr
    finally:
        options.validated = stop
    return {"root": root, "ink_folds": root / "folds.parquet"}


@pytest.fixture(scope="module")
def det_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two box prediction files of the same three images."""
    import numpy as np

    import pandas as pd

    from kcomp.artifacts.predictions import write_predictions

    root = tmp_path_factory.mktemp("det")
    rng = np.random.default_rng(0)
    for k in range(2):
        boxes = [[{"x1": float(x), "y1": float(y), "x2": float(x + 10), "y2": float(y + 12), "score": float(s),
                   "label": int(lab)} for x, y, s, lab in zip(rng.uniform(0, 60, n), rng.uniform(0, 50, n),
                                                              rng.uniform(0, 1, n), rng.integers(0, 2, n))]
                 for n in (3, 0, 5)]
        df = pd.DataFrame({"id": ["a", "b", "c"], "fold": -1, "height": 64, "width": 80, "boxes": boxes})
        write_predictions(df, root / f"det{k}.parquet", task="det", kind="test", classes=["x", "y"], values="boxes")
    return {"root": root, "det0": root / "det0.parquet", "det1": root / "det1.parquet"}


@pytest.fixture(scope="module")
def oof_copy(tmp_path_factory: pytest.TempPathFactory, demo_run: dict[str, Path]) -> Path:
    """A second OOF file for `ensemble` (a copy of the demo's)."""
    copy = tmp_path_factory.mktemp("oof_b") / "oof_b.parquet"
    shutil.copy2(demo_run["oof"], copy)
    return copy


# ------------------------------------------------------------------------------------------------------ setups
# Each adds the names its argv uses and the roots of the inputs it reads (checked byte for byte afterwards).


def _demo(ctx: Ctx) -> None:
    demo_files(ctx)
    ctx.names["roots"] = [ctx.demo["root"]]


def _two_oofs(ctx: Ctx) -> None:
    _oof_twice(ctx)
    ctx.names["roots"] = [ctx.demo["root"]]


def _ink(ctx: Ctx) -> None:
    data = ctx.request.getfixturevalue("ink_data")
    ctx.add(ink_folds=data["ink_folds"], roots=[data["root"]])


def _det(ctx: Ctx) -> None:
    data = ctx.request.getfixturevalue("det_data")
    ctx.add(det0=data["det0"], det1=data["det1"], roots=[data["root"]])


def _no_trainable_fold(ctx: Ctx) -> None:
    """The demo folds with every row's fold set to -1 (nothing is ever validated, so no fold can be trained)."""
    import numpy as np
    import pandas as pd

    from kcomp.artifacts import read_index, write_folds

    _demo(ctx)
    table = read_index(ctx.demo["folds"])
    table.df = pd.DataFrame(table.df.drop(columns=["fold"]))
    write_folds(table, np.full(len(table.df), -1), ctx.tmp / "nofold.parquet")
    ctx.add(bad=ctx.tmp / "nofold.parquet")


def _other_architecture(ctx: Ctx) -> None:
    """resnet26's weights for a resnet18: bottleneck blocks, so only some names and shapes agree."""
    import timm
    import torch

    _demo(ctx)
    torch.save(timm.create_model("resnet26").state_dict(), ctx.tmp / "r26.pth")
    ctx.add(weights=ctx.tmp / "r26.pth")


def _preview_dir(ctx: Ctx) -> None:
    _demo(ctx)
    ctx.add(previews=ctx.tmp / "previews")


# -------------------------------------------------------------------------------------------------------- rows
# (setup, argv, regex the error line must match after "kcomp: error: ", exit code). {names} are filled from the
# setup; outputs go under {out}.

TRAIN = ("train", "cls", "--folds", "{folds}", "-o", "{out}/run", *TRAIN_FAST)
INK = ("train", "ink", "--folds", "{ink_folds}", "-o", "{out}/run", *INK_FAST)
SEG = ("train", "seg", "--folds", "{folds}", "-o", "{out}/run", *TRAIN_FAST)
DET = ("train", "det", "--folds", "{folds}", "-o", "{out}/run", *TRAIN_FAST)
OOF = ("oof", "{run}", "-o", "{out}/oof.parquet", "--workers", "0")
TTA = ("tta", "{run}", "-o", "{out}/test.parquet", "--workers", "0")
WBF = ("wbf", "{det0}", "{det1}", "-o", "{out}/fused.parquet")
ENSEMBLE = ("ensemble", "{oof}", "{oof_b}", "-o", "{out}/blend.parquet")
STACK = ("stack", "{oof}", "--test", "{test}", "-o", "{out}/stack.parquet")
TUNE = ("tune-threshold", "{oof}", "-o", "{out}/thr.json")
SPLIT = ("split", "{index}", "-o", "{out}/folds.parquet")
SUBMIT = ("submit", "demo", "{test}", "-o", "{out}/sub.csv", "--sample", "{sample}")
BIG = str(2**63)


def row(setup: Callable[[Ctx], None], argv: tuple, pattern: str, name: str, code: int = 2) -> Any:
    return pytest.param(setup, argv, pattern, code, id=name)


ROWS = [
    # ---- A: seeds and sizes past what they feed; negative counts
    row(_demo, (*TRAIN, "--seed", "-1"), r"--seed -1: must be at least 0", "train-seed-negative"),
    row(_demo, (*TRAIN, "--seed", str(2**32)), r"--seed 4294967296: must be at most 4294967295", "train-seed-2-32"),
    row(_demo, (*SPLIT, "--seed", "-1"), r"--seed -1: must be at least 0", "split-seed-negative"),
    row(_demo, (*SPLIT, "--seed", BIG), rf"--seed {BIG}: must be at most 4294967295", "split-seed-2-63"),
    row(_demo, (*STACK, "--seed", "-1"), r"--seed -1: must be at least 0", "stack-seed-negative"),
    row(_demo, ("prep", "demo", "-o", "{out}/data", "--seed", str(2**32)), r"--seed 4294967296: must be at most",
        "prep-seed-2-32"),
    row(_demo, (*TTA, "--batch-size", "-4"), r"--batch-size -4: must be at least 1", "tta-batch-size-negative"),
    row(_demo, (*TTA, "--batch-size", "0"), r"--batch-size 0: must be at least 1", "tta-batch-size-zero"),
    row(_demo, (*OOF, "--batch-size", BIG), r"--batch-size \d+: must be at most 65536", "oof-batch-size-2-63"),
    row(_demo, (*TRAIN, "--workers", "-1"), r"--workers -1: must be at least 0", "train-workers-negative"),
    row(_demo, (*OOF, "--workers", BIG), r"--workers \d+: must be at most 256", "oof-workers-2-63"),
    row(_ink, (*INK, "--patch", "0"), r"--patch 0: must be at least 32", "train-ink-patch-zero"),
    row(_ink, (*INK, "--patch", "100"), r"--patch 100: must be a multiple of 32", "train-ink-patch-not-32x"),
    row(_demo, (*TRAIN, "--epochs", BIG), r"--epochs \d+: must be at most 100000", "train-epochs-2-63"),
    # ---- E: values the old checks let through, or caught only after an epoch
    row(_demo, (*TRAIN, "--lr", "nan"), r"--lr nan: expected a finite number", "train-lr-nan"),
    row(_demo, (*TRAIN, "--lr", "inf"), r"--lr inf: expected a finite number", "train-lr-inf"),
    row(_demo, (*TRAIN, "--lr", "0"), r"--lr 0\.0: must be in \(0, 1\]", "train-lr-zero"),
    row(_demo, (*TRAIN, "--val-tta", "3"), r"--val-tta 3: expected 1, 2, 4 or 8", "train-val-tta-3"),
    row(_demo, (*TRAIN, "--metric", "dice"), r"--metric dice: unknown metric for task cls", "train-metric-of-seg"),
    row(_demo, (*TRAIN, "--warmup-epochs", "3"), r"--warmup-epochs 3\.0: longer than --epochs 1",
        "train-warmup-longer-than-training"),
    # ---- G: invalid values accepted or ignored before
    row(_demo, (*TRAIN, "--aug", "foo"), r"--aug foo: unknown augmentation level; choose one of: none, light",
        "train-aug-unknown"),
    row(_demo, (*TRAIN, "--weight-decay", "-1"), r"--weight-decay -1\.0: must be at least 0",
        "train-weight-decay-negative"),
    row(_demo, (*TRAIN, "--weight-decay", "2000"), r"--weight-decay 2000\.0: with --lr 0\.001 it would zero or flip",
        "train-weight-decay-flips-weights"),
    row(_demo, (*TRAIN, "--mixup", "0.4", "--mix-prob", "5"), r"--mix-prob 5\.0: must be in \[0, 1\]",
        "train-mix-prob-5"),
    row(_demo, (*TRAIN, "--warmup-epochs", "-5"), r"--warmup-epochs -5\.0: must be at least 0",
        "train-warmup-negative"),
    row(_demo, (*TRAIN, "--save-every", "-3"), r"--save-every -3: must be at least 0", "train-save-every-negative"),
    row(_demo, (*TRAIN, "--ema", "1"), r"--ema 1\.0: must be in \[0, 1\)", "train-ema-one"),
    row(_demo, (*TRAIN, "--drop-rate", "nan"), r"--drop-rate nan: expected a finite number", "train-drop-rate-nan"),
    row(_demo, (*TRAIN, "--amp", "fp8"), r"--amp fp8: unknown precision; choose one of: auto, bf16, fp16, off",
        "train-amp-unknown"),
    row(_demo, (*TRAIN, "--device", "gpu"), r"--device gpu: expected auto, cpu, cuda or cuda:N",
        "train-device-unknown"),
    row(_ink, (*INK, "--stride", "0"), r"--stride 0: must be at least 1", "train-ink-stride-zero"),
    row(_ink, (*INK, "--neg-fraction", "-1"), r"--neg-fraction -1\.0: must be in \[0, 1\]",
        "train-ink-neg-fraction-negative"),
    row(_ink, (*INK, "--layers", "5by7"), r"--layers 5by7: expected GROUPSxLAYERS", "train-ink-layers-malformed"),
    row(_demo, (*TRAIN, "--gpus", "0"), r"--gpus 0: must be at least 1", "train-gpus-zero"),
    row(_demo, (*TRAIN, "--nodes", "0"), r"--nodes 0: must be at least 1", "train-nodes-zero"),
    row(_demo, (*TRAIN, "--nodes", "1", "--node-rank", "5"), r"--node-rank 5: must be in 0\.\.0 for --nodes 1",
        "train-node-rank-beyond-nodes"),
    row(_demo, (*OOF, "--gpus", "0"), r"--gpus 0: must be at least 1", "oof-gpus-zero"),
    row(_demo, (*TTA, "--master-port", "70000"), r"--master-port 70000: must be at most 65535", "tta-port-70000"),
    row(_no_trainable_fold, ("train", "cls", "--folds", "{bad}", "-o", "{out}/run", "--fold", "all", "--img-size",
                             "32", "--epochs", "1", "--workers", "0"),
        r"{bad}: has no fold to train \(every train row has fold -1\)", "train-fold-all-nothing-to-train"),
    row(_other_architecture, (*TRAIN, "--weights", "{weights}"),
        r"{weights}: fills \d+ of the \d+ tensors of the model, fewer than 90% .*--weights-partial",
        "train-weights-of-another-architecture"),
    row(_demo, (*TRAIN, "--weights-partial"), r"--weights-partial applies only with --weights",
        "train-weights-partial-without-weights"),
    row(_demo, (*TRAIN, "--pretrained", "--weights", "{folds}"),
        r"--pretrained with --weights \S+: both name the starting weights", "train-pretrained-with-weights"),
    row(_demo, (*TRAIN, "--no-pretrained", "--pretrained-tag", "a1_in1k"),
        r"--pretrained-tag a1_in1k applies only with --pretrained", "train-pretrained-tag-without-pretrained"),
    row(_demo, (*TRAIN, "--pretrained-tag", "a/b"), r"--pretrained-tag a/b: expected a pretrained tag",
        "train-pretrained-tag-malformed"),
    row(_demo, (*DET, "--pretrained-tag", "a1_in1k"), r"--pretrained-tag does not apply to task det",
        "train-det-pretrained-tag"),
    # ---- G: options that mean nothing for the task (or without the option they refine)
    row(_demo, (*SEG, "--mixup", "0.2"), r"--mixup does not apply to task seg \(only to cls\)", "train-seg-mixup"),
    row(_demo, (*DET, "--cutmix", "1"), r"--cutmix does not apply to task det", "train-det-cutmix"),
    row(_ink, (*INK, "--loss", "taylor"), r"--loss does not apply to task ink", "train-ink-loss"),
    row(_demo, (*SEG, "--t1", "0.8"), r"--t1 does not apply to task seg", "train-seg-t1"),
    row(_demo, (*DET, "--t2", "1.4"), r"--t2 does not apply to task det", "train-det-t2"),
    row(_ink, (*INK, "--taylor-n", "3"), r"--taylor-n does not apply to task ink", "train-ink-taylor-n"),
    row(_demo, (*SEG, "--drop-rate", "0.2"), r"--drop-rate does not apply to task seg", "train-seg-drop-rate"),
    row(_demo, (*DET, "--drop-path", "0.1"), r"--drop-path does not apply to task det", "train-det-drop-path"),
    row(_demo, (*DET, "--smoothing", "0.1"), r"--smoothing does not apply to task det", "train-det-smoothing"),
    row(_ink, (*INK, "--aug", "light"), r"--aug does not apply to task ink \(only to cls, seg, det\)",
        "train-ink-aug"),
    row(_ink, (*INK, "--img-size", "64"), r"--img-size does not apply to task ink", "train-ink-img-size"),
    row(_demo, (*SEG, "--target", "label"), r"--target does not apply to task seg", "train-seg-target"),
    row(_demo, (*TRAIN, "--patch", "64"), r"--patch does not apply to task cls \(only to ink\)", "train-cls-patch"),
    row(_demo, (*DET, "--seg-loss", "dice"), r"--seg-loss does not apply to task det", "train-det-seg-loss"),
    row(_demo, (*TRAIN, "--t1", "0.5"), r"--t1 0\.5 applies only with --loss bi_tempered", "train-t1-with-ce"),
    row(_demo, (*TRAIN, "--taylor-n", "4"), r"--taylor-n 4 applies only with --loss taylor", "train-taylor-n-with-ce"),
    row(_demo, (*TRAIN, "--loss", "taylor", "--taylor-n", BIG), r"--taylor-n \d+: must be at most 32",
        "train-taylor-n-2-63"),
    row(_demo, (*TRAIN, "--mix-prob", "0.5"), r"--mix-prob 0\.5 applies only with --mixup or --cutmix",
        "train-mix-prob-without-mixing"),
    # ---- the data-centric options (issue 24): checked, and the files they name read, before anything is created
    row(_demo, (*SEG, "--drop", "{oof}"), r"--drop does not apply to task seg \(only to cls\)", "train-seg-drop"),
    row(_demo, (*DET, "--teacher", "{oof}", "--distill-alpha", "0.5"), r"--teacher does not apply to task det",
        "train-det-teacher"),
    row(_demo, (*TRAIN, "--distill-alpha", "0.5"), r"--distill-alpha 0\.5 applies only with --teacher",
        "train-distill-alpha-without-teacher"),
    row(_demo, (*TRAIN, "--teacher", "{oof}"), r"--teacher needs --distill-alpha A", "train-teacher-without-alpha"),
    row(_demo, (*TRAIN, "--teacher", "{oof}", "--distill-alpha", "1.5"), r"--distill-alpha 1\.5: must be in \[0, 1\]",
        "train-distill-alpha-above-1"),
    row(_demo, (*TRAIN, "--teacher", "{oof}", "--distill-alpha", "0.5", "--distill-temperature", "0"),
        r"--distill-temperature 0\.0: must be in \(0, 100\]", "train-distill-temperature-zero"),
    row(_demo, (*TRAIN, "--teacher", "{test}", "--distill-alpha", "0.5"),
        r"{test}: holds test predictions, expected oof", "train-teacher-of-test-rows"),
    row(_demo, (*TRAIN, "--extra", "{oof}"), r"{oof}: is a kcomp 'predictions' file, expected pseudo",
        "train-extra-not-pseudo-rows"),
    row(_demo, (*TRAIN, "--drop", "{tmp}/missing.parquet"), r"missing\.parquet: no such file", "train-drop-missing"),
    row(_demo, (*TRAIN, "--relabel", "-"), r"--relabel -: train records the files it reads", "train-relabel-stdin"),
    # ---- oof / tta
    row(_demo, (*OOF, "--tta", "3"), r"--tta 3: expected 1, 2, 4 or 8", "oof-tta-3"),
    row(_demo, (*OOF, "--checkpoints", "worst"), r"--checkpoints worst: unknown checkpoint choice",
        "oof-checkpoints-unknown"),
    row(_demo, (*OOF, "--out-size", "0x5"), r"--out-size 0x5: sides must be in 1\.\.16384", "oof-out-size-zero"),
    row(_demo, (*OOF, "--device", "tpu"), r"--device tpu: expected auto, cpu, cuda or cuda:N", "oof-device-unknown"),
    row(_demo, (*OOF, "--tta-scales", "0.1,1"), r"--tta-scales 0\.1,1: must be in \[0\.25, 4\] \(each value\)",
        "oof-tta-scales-out-of-range"),
    row(_demo, (*TTA, "--tta-scales", "1,x"), r"--tta-scales 1,x: expected comma-separated numbers",
        "tta-tta-scales-not-numbers"),
    row(_demo, (*OOF, "--img-size", "0"), r"--img-size 0: must be at least 1", "oof-img-size-zero"),
    row(_demo, (*TTA, "--preview-count", "3"), r"--preview-count 3 applies only with --preview DIR",
        "tta-preview-count-without-preview"),
    row(_preview_dir, (*TTA, "--preview", "{previews}", "--preview-count", "0"),
        r"--preview-count 0: must be at least 1", "tta-preview-count-zero"),
    row(_preview_dir, (*TTA, "--preview", "{previews}"), r"--preview does not apply to task cls \(only to seg, ink\)",
        "tta-preview-of-cls"),
    # ---- wbf
    row(_det, (*WBF, "--method", "nms", "--skip-box-thr", "0.1"),
        r"--skip-box-thr 0\.1 applies only with --method wbf or soft_nms", "wbf-skip-box-thr-with-nms"),
    row(_det, (*WBF, "--iou", "0"), r"--iou 0\.0: must be in \(0, 1\]", "wbf-iou-zero"),
    row(_det, (*WBF, "--iou", "nan"), r"--iou nan: expected a finite number", "wbf-iou-nan"),
    row(_det, (*WBF, "--skip-box-thr", "1.5"), r"--skip-box-thr 1\.5: must be in \[0, 1\]", "wbf-skip-above-one"),
    row(_det, (*WBF, "--conf-type", "median"), r"--conf-type median: unknown confidence type",
        "wbf-conf-type-unknown"),
    row(_det, (*WBF, "--method", "vote"), r"--method vote: unknown fusion method; choose one of: wbf, nms, soft_nms",
        "wbf-method-unknown"),
    row(_det, (*WBF, "--weights", "1,-1"), r"--weights 1,-1: must be at least 0 \(each value\)",
        "wbf-weights-negative"),
    # ---- ensemble
    row(_two_oofs, (*ENSEMBLE, "--power", "3"), r"--power 3\.0 applies only with --method power",
        "ensemble-power-without-power-method"),
    row(_two_oofs, (*ENSEMBLE, "--method", "power", "--power", "0"), r"--power 0\.0: must be in \(0, 64\]",
        "ensemble-power-zero"),
    row(_two_oofs, (*ENSEMBLE, "--method", "power", "--power", "inf"), r"--power inf: expected a finite number",
        "ensemble-power-inf"),
    row(_two_oofs, (*ENSEMBLE, "--weights", "0,0"), r"--weights 0,0: all weights are zero", "ensemble-weights-zero"),
    row(_two_oofs, (*ENSEMBLE, "--weights", "1,nan"), r"--weights 1,nan: expected a finite number \(each value\)",
        "ensemble-weights-nan"),
    row(_two_oofs, (*ENSEMBLE, "--weights", "1,x"), r"--weights 1,x: expected comma-separated numbers",
        "ensemble-weights-not-numbers"),
    # ---- stack
    row(_demo, (*STACK, "--folds", "1"), r"--folds 1: must be at least 2", "stack-folds-one"),
    row(_demo, (*STACK, "--model", "svm"), r"--model svm: unknown stacking model; choose one of: logreg",
        "stack-model-unknown"),
    # ---- tune-threshold
    row(_demo, (*TUNE, "--thresholds", "0.5,2"), r"--thresholds 0\.5,2: must be in \[0, 1\] \(each value\)",
        "tune-thresholds-above-one"),
    row(_demo, (*TUNE, "--min-sizes", "100,-1"), r"--min-sizes 100,-1: must be at least 0 \(each value\)",
        "tune-min-sizes-negative"),
    row(_demo, (*TUNE, "--tops", "nan"), r"--tops nan: expected a finite number \(each value\)", "tune-tops-nan"),
    row(_demo, (*TUNE, "--downscale", "0"), r"--downscale 0: must be at least 1", "tune-downscale-zero"),
    row(_demo, (*TUNE, "--downscale", "4"), r"--downscale does not apply to task cls \(only to ink\)",
        "tune-downscale-on-cls"),
    row(_demo, (*TUNE, "--thresholds", "0.3,0.5"), r"--thresholds does not apply to task cls \(only to seg\)",
        "tune-thresholds-on-cls"),
    # ---- split
    row(_demo, (*SPLIT, "--folds", "0"), r"--folds 0: must be at least 2", "split-folds-zero"),
    row(_demo, (*SPLIT, "--folds", "1"), r"--folds 1: must be at least 2", "split-folds-one"),
    row(_demo, (*SPLIT, "--folds", BIG), rf"only 300 train rows, fewer than --folds {BIG}", "split-folds-2-63"),
    # ---- prep
    row(_demo, ("prep", "demo", "-o", "{out}/data", "--size", "0"), r"--size 0: must be at least 16", "prep-size-zero"),
    row(_demo, ("prep", "demo", "-o", "{out}/data", "--size", BIG), r"--size \d+: must be at most 4096",
        "prep-size-2-63"),
    row(_demo, ("prep", "demo", "-o", "{out}/data", "--workers", "-1"), r"--workers -1: must be at least 0",
        "prep-workers-negative"),
    row(_demo, ("prep", "cassava", "{data}/raw", "-o", "{out}/data", "--seed", "3"),
        r"--seed does not apply to competition cassava \(it reads --size, --workers\)", "prep-seed-for-cassava"),
    row(_demo, ("prep", "demo", "-o", "{out}/data", "--bits", "16"), r"--bits does not apply to competition demo",
        "prep-bits-for-demo"),
    row(_demo, ("prep", "demo", "-o", "{out}/data", "--skip-bad"), r"--skip-bad does not apply to competition demo",
        "prep-skip-bad-for-demo"),
    # ---- submit / report
    row(_demo, (*SUBMIT, "--none-power", "-1"), r"--none-power -1\.0: must be at least 0",
        "submit-none-power-negative"),
    row(_demo, (*SUBMIT, "--none-power", "nan"), r"--none-power nan: expected a finite number",
        "submit-none-power-nan"),
    row(_demo, (*SUBMIT, "--none-power", "0.3"), r"--none-power does not apply to competition demo",
        "submit-none-power-for-demo"),
    row(_demo, ("report", "{oof}", "-o", "{out}/report", "--previews", "-1"), r"--previews -1: must be at least 0",
        "report-previews-negative"),
    # ---- click's own usage errors: one line too
    row(_demo, (*TRAIN, "--epochs", "abc"), r"--epochs abc: .*integer.* \(see 'kcomp train --help'\)",
        "train-epochs-not-a-number"),
    row(_demo, (*TRAIN, "--lr=fast"), r"--lr fast: .*number", "train-lr-not-a-number-with-equals"),
    row(_demo, (*TRAIN, "--bogus"), r"No such option: --bogus", "train-unknown-option"),
    row(_demo, ("split", "-o", "{out}/folds.parquet"), r"Missing argument 'index'", "split-missing-argument"),
    row(_demo, ("nope",), r"No such command 'nope'", "unknown-command"),
]


def test_rows_cover_every_command_that_takes_options() -> None:
    ids = [r.id for r in ROWS]
    assert len(ids) == len(set(ids))
    for command in ("prep", "split", "train", "oof", "tta", "wbf", "ensemble", "stack", "tune-threshold", "submit",
                    "report"):
        assert any(r.values[1][0] == command for r in ROWS), command


@pytest.mark.parametrize(("setup", "argv", "pattern", "code"), ROWS)
def test_option_refused_before_anything_is_created(setup: Callable[[Ctx], None], argv: tuple, pattern: str,
                                                   code: int, tmp_path: Path, request: pytest.FixtureRequest,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    work, out = tmp_path / "in", tmp_path / "out"
    work.mkdir()
    out.mkdir()
    ctx = Ctx(work, out, request)
    setup(ctx)
    names = {"tmp": work, "out": out, **{k: v for k, v in ctx.names.items() if k != "roots"}}
    args = [_fill(a, names, escape=False) for a in argv]
    existing = _existing_output(args, out) if "-" not in args else None
    roots = [tmp_path, *ctx.names.get("roots", [])]
    before = _tree(roots)
    monkeypatch.chdir(work)  # a stray relative write (a directory named "-") would land here

    r = invoke(*args)

    assert r.code == code, f"exit {r.code}\nstderr: {r.stderr}"
    line = _one_error_line(r)
    assert re.search(_fill(pattern, names, escape=True), line), f"{line!r} does not match {pattern!r}"
    assert r.stdout == ""
    assert _tree(roots) == before, "a refused option changed or added files"
    if existing is not None:
        assert existing.read_bytes().startswith(b"previous output")


@pytest.mark.parametrize("args", [("train", "cls", "--folds", "f.parquet", "-o", "run", "--epochs", "abc"),
                                  ("train", "cls", "--bogus"), ("split",)], ids=["not-a-number", "unknown", "missing"])
def test_usage_errors_are_one_line_through_a_fresh_interpreter(args: tuple, tmp_path: Path) -> None:
    r = run_cli(*args, cwd=tmp_path)
    assert r.code == 2
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("kcomp: error: "), r.stderr
    assert "Usage:" not in r.stderr and r.stdout == ""
    assert list(tmp_path.iterdir()) == []


def test_train_spec_covers_every_config_key() -> None:
    """A key added to DEFAULTS without a spec would go unchecked."""
    from kcomp.runs import config

    assert set(config.SPECS) == set(config.DEFAULTS)


# ----------------------------------------------------------------------------------- generated from the CLI


def _number_type(hint: Any) -> type | None:
    if typing.get_origin(hint) is typing.Annotated:
        hint = typing.get_args(hint)[0]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        hint = args[0] if len(args) == 1 else None
    return hint if hint in (int, float) else None


def numeric_options() -> list[tuple[str, str, str, type]]:
    """(command, parameter, flag, int | float) for every option of every kcomp command annotated as a number."""
    import inspect

    import typer.main

    from kcomp.commands.main import app

    found = []
    for command, cmd in typer.main.get_command(app).commands.items():
        hints = typing.get_type_hints(inspect.unwrap(cmd.callback), include_extras=True)
        for param in cmd.params:
            kind = _number_type(hints.get(param.name))
            flags = [o for o in param.opts if o.startswith("--")]
            if kind is not None and flags:
                found.append((command, param.name, flags[0], kind))
    return found


NUMERIC = numeric_options()
VALUES = {int: ["0", "-1", str(2**63)], float: ["0", "-1", "nan", str(2**63)]}

# A valid invocation of each command on the small data, and what an option needs besides to mean something.
BASE = {
    "prep": ("prep", "demo", "-o", "{out}/data"),
    "split": SPLIT,
    "train": TRAIN,
    "oof": OOF,
    "tune-threshold": TUNE,
    "tta": TTA,
    "wbf": WBF,
    "ensemble": ENSEMBLE,
    "stack": STACK,
    "submit": SUBMIT,
    "report": ("report", "{oof}", "-o", "{out}/report"),
    "pseudo": ("pseudo", "{test}", "-o", "{out}/pseudo.parquet"),
    "pack": ("pack", "{test}", "{run}", "--comp", "demo", "-o", "{out}/pkg"),
}
WITH = {
    ("train", "t1"): ("--loss", "bi_tempered"), ("train", "t2"): ("--loss", "bi_tempered"),
    ("train", "taylor_n"): ("--loss", "taylor"), ("train", "mix_prob"): ("--mixup", "0.2"),
    ("tta", "preview_count"): ("--preview", "{out}/previews"), ("ensemble", "power"): ("--method", "power"),
    ("train", "distill_alpha"): ("--teacher", "{oof}"),
    ("train", "distill_temperature"): ("--teacher", "{oof}", "--distill-alpha", "0.5"),
}


def _case_argv(command: str, param: str) -> tuple[str, ...]:
    """The base invocation for `command`, on ink data for ink-only train options, plus what `param` needs."""
    from kcomp.runs import config

    base = BASE[command]
    if command == "train" and param in config.SPECS and config.SPECS[param].only == ("ink",):
        base = INK
    return (*base, *WITH.get((command, param), ()))


def _inputs(request: pytest.FixtureRequest, argv: tuple[str, ...], out: Path) -> tuple[dict[str, Any], list[Path]]:
    """The names `argv` uses, from the session and module fixtures, and the roots holding them."""
    demo = request.getfixturevalue("demo_run")
    names: dict[str, Any] = {"out": out, **{k: demo[k] for k in ("index", "folds", "run", "oof", "test", "sample")}}
    copy = request.getfixturevalue("oof_copy")
    names["oof_b"], roots = copy, [demo["root"], copy.parent]
    if any("{ink_folds}" in a for a in argv):
        ink = request.getfixturevalue("ink_data")
        names["ink_folds"], roots = ink["ink_folds"], [*roots, ink["root"]]
    if any("{det" in a for a in argv):
        det = request.getfixturevalue("det_data")
        names.update(det0=det["det0"], det1=det["det1"])
        roots.append(det["root"])
    return names, roots


def _ids(cases: list[tuple]) -> list[str]:
    return [f"{c[0]}{c[2]}" for c in cases]


def test_the_generated_cases_cover_every_command_with_numbers() -> None:
    missing = {c[0] for c in NUMERIC} - set(BASE)
    assert not missing, f"{missing}: give BASE a valid invocation (and call kcomp.options.validated in the command)"
    assert set(BASE) <= {c[0] for c in NUMERIC}
    assert ("train", "lr", "--lr", float) in NUMERIC and ("tta", "batch_size", "--batch-size", int) in NUMERIC


@pytest.mark.parametrize("command", sorted(BASE))
def test_the_seam_is_reached_once_with_nothing_created(command: str, tmp_path: Path, request: pytest.FixtureRequest,
                                                       seam: list[str]) -> None:
    argv = BASE[command]
    names, roots = _inputs(request, argv, tmp_path / "out")
    (tmp_path / "out").mkdir()
    before = _tree([tmp_path, *roots])
    r = invoke(*[_fill(a, names, escape=False) for a in argv])
    assert r.code == SEAM, f"{command} did not reach kcomp.options.validated: {r.code} {r.stderr}"
    assert seam == [command]
    assert _tree([tmp_path, *roots]) == before, "something was created before the checking phase ended"


@pytest.mark.parametrize("command", ["split", "ensemble", "wbf", "report"])
def test_the_seam_comes_before_the_output(command: str, tmp_path: Path, request: pytest.FixtureRequest,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Not stopped, the command passes the seam once, while its output does not exist yet, and then writes it."""
    from kcomp import options

    out = tmp_path / "out"
    out.mkdir()
    names, _ = _inputs(request, BASE[command], out)
    seen: list[list[Path]] = []
    monkeypatch.setattr(options, "validated", lambda c: seen.append(sorted(out.iterdir())))
    r = invoke(*[_fill(a, names, escape=False) for a in BASE[command]])
    assert r.code == 0, r.stderr
    assert seen == [[]], "called once, before anything was written"
    assert list(out.iterdir())


@pytest.mark.parametrize(("command", "param", "flag", "kind"), NUMERIC, ids=_ids(NUMERIC))
def test_numeric_option_values(command: str, param: str, flag: str, kind: type, tmp_path: Path,
                               request: pytest.FixtureRequest, seam: list[str], judged: list[str]) -> None:
    argv = _case_argv(command, param)
    for i, value in enumerate(VALUES[kind]):
        out = tmp_path / f"out{i}"
        out.mkdir()
        names, roots = _inputs(request, argv, out)
        before = _tree([tmp_path, *roots])
        r = invoke(*[_fill(a, names, escape=False) for a in argv], flag, value)
        if r.code != SEAM:
            assert r.code == 2, f"{flag} {value}: exit {r.code}\n{r.stderr}"
            _one_error_line(r, at_most=1)
        assert _tree([tmp_path, *roots]) == before, f"{flag} {value} left files behind"
    assert param in judged, f"{command} {flag} was never checked against a kcomp.options.Spec"


@pytest.mark.slow
@pytest.mark.parametrize(("command", "param", "flag", "kind"), NUMERIC, ids=_ids(NUMERIC))
def test_numeric_option_values_end_to_end(command: str, param: str, flag: str, kind: type, tmp_path: Path,
                                          request: pytest.FixtureRequest) -> None:
    argv = _case_argv(command, param)
    for i, value in enumerate(VALUES[kind]):
        out = tmp_path / f"out{i}"
        out.mkdir()
        names, roots = _inputs(request, argv, out)
        before = _tree(roots)
        r = run_cli(*[_fill(a, names, escape=False) for a in argv], flag, value, cwd=tmp_path)
        assert r.code in (0, 2), f"{flag} {value}: exit {r.code}\n{r.stderr}"
        assert _tree(roots) == before, f"{flag} {value} changed an input"
        if r.code == 2:
            _one_error_line(r, at_most=1)
            assert list(out.iterdir()) == [], f"{flag} {value} failed but left {list(out.iterdir())}"


# ------------------------------------------------------------------------------------- --weights partial loads


def test_weights_of_another_architecture_are_refused_unless_partial(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import timm
    import torch

    from kcomp import console
    from kcomp.errors import BadInput
    from kcomp.models import create_cls_model

    monkeypatch.setattr(console, "_state", {"quiet": False})
    other = timm.create_model("resnet26")  # bottleneck blocks: only the stem and a few convs agree with resnet18
    torch.save(other.state_dict(), tmp_path / "r26.pth")
    own = len(timm.create_model("resnet18", num_classes=5).state_dict())
    fits = sum(1 for k, v in timm.create_model("resnet18", num_classes=5).state_dict().items()
               if k in other.state_dict() and other.state_dict()[k].shape == v.shape)
    assert fits < 0.9 * own
    with pytest.raises(BadInput, match=rf"r26\.pth: fills {fits} of the {own} tensors of the model, fewer than 90%"):
        create_cls_model("resnet18", 5, weights=str(tmp_path / "r26.pth"))

    model = create_cls_model("resnet18", 5, weights=str(tmp_path / "r26.pth"), weights_partial=True)
    torch.testing.assert_close(model.net.conv1.weight, other.conv1.weight)
    assert f"fills {fits} of the {own} tensors of the model" in " ".join(capsys.readouterr().err.split())

    imagenet = timm.create_model("resnet18")  # 1000 classes: only the head (fc.weight, fc.bias) differs
    torch.save(imagenet.state_dict(), tmp_path / "r18.pth")
    model = create_cls_model("resnet18", 5, weights=str(tmp_path / "r18.pth"))
    torch.testing.assert_close(model.net.layer4[1].conv2.weight, imagenet.layer4[1].conv2.weight)
    logged = " ".join(capsys.readouterr().err.split())
    assert f"fills {own - 2} of the {own} tensors of the model; 2 of its tensors unused (e.g. fc.weight)" in logged


def test_a_cuda_index_past_the_devices_is_bad_usage(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from kcomp.errors import BadUsage
    from kcomp.runtime.device import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(BadUsage, match=r"--device cuda:3: this machine has 1 CUDA device\(s\)"):
        resolve_device("cuda:3")
    with pytest.raises(BadUsage, match=r"--device cuda:x: expected auto, cpu, cuda or cuda:N"):
        resolve_device("cuda:x")


def test_the_corrected_command_is_not_refused_after_a_refused_one(tmp_path: Path, demo_run: dict[str, Path],
                                                                 seam: list[str]) -> None:
    """The refusal that comes last in train's checking (the weights, once the model is built) leaves no run dir,
    so the command without them is not refused as "started with other options"."""
    import timm
    import torch

    torch.save(timm.create_model("resnet26").state_dict(), tmp_path / "r26.pth")
    run = tmp_path / "run"
    train = ("train", "cls", "--folds", demo_run["folds"], "-o", run, *TRAIN_FAST)
    r = invoke(*train, "--weights", tmp_path / "r26.pth")
    assert r.code == 2 and "--weights-partial" in r.stderr, r.stderr
    assert not run.exists()
    assert invoke(*train).code == SEAM and seam == ["train"]

"""Nothing lost: a run killed with SIGKILL and resumed ends with the same weights as an uninterrupted one."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import run_cli

TRAIN = ["train", "cls", "--img-size", "32", "--epochs", "2", "--batch-size", "16", "--drop-rate", "0.2",
         "--drop-path", "0.1", "--mixup", "0.4", "--cutmix", "1.0", "--ema", "0.9", "--deterministic",
         "--freeze-epochs", "1", "--sampler", "balanced", "--class-weights", "balanced", "--patience", "5",
         "--grad-checkpointing", "--save-every", "1"]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    ck = torch.load(run / "fold0" / "last.pt", weights_only=True)
    return {**{f"model.{k}": v for k, v in ck["model"].items()}, **{f"ema.{k}": v for k, v in ck["ema"].items()}}


def _kill_and_resume(args: list[str], run: Path, kills: int, seed: int) -> int:
    """Start the command, SIGKILL it at a random moment after it has saved at least once, repeat until done."""
    rng = random.Random(seed)
    killed = 0
    cmd = [sys.executable, "-m", "kcomp.commands.main", "--quiet", *args]
    while True:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if killed < kills:
            ckpt = run / "fold0" / "last.pt"
            start = ckpt.stat().st_mtime if ckpt.exists() else 0
            deadline = time.time() + 120
            while proc.poll() is None and time.time() < deadline and (
                    not ckpt.exists() or ckpt.stat().st_mtime == start):
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 0.6))
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                killed += 1
                continue
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()
        return killed


@pytest.fixture(scope="module")
def uninterrupted(demo_run, tmp_path_factory) -> Path:
    """TRAIN on fold 0 reading in-process, never interrupted: the reference of this module's resumed runs."""
    run = tmp_path_factory.mktemp("uninterrupted") / "run"
    assert run_cli(*TRAIN, "--folds", str(demo_run["folds"]), "--fold", "0", "--workers", "0", "-o", run).code == 0
    return run


@pytest.mark.parametrize("workers", ["0", "2"])
def test_sigkill_resume_is_bit_identical(demo_run, uninterrupted, tmp_path, workers):
    folds = ["--folds", str(demo_run["folds"]), "--fold", "0", "--workers", workers]
    ref = uninterrupted
    if workers != "0":
        ref = tmp_path / "ref"
        assert run_cli(*TRAIN, *folds, "-o", ref).code == 0
    resumed = tmp_path / "resumed"
    killed = _kill_and_resume([*TRAIN, *folds, "-o", str(resumed)], resumed, kills=5, seed=int(workers))
    assert killed == 5  # two parametrisations: 10 interruptions in all
    a, b = _weights(ref), _weights(resumed)
    assert a.keys() == b.keys()
    diff = [k for k in a if not torch.equal(a[k], b[k])]
    assert not diff, f"{len(diff)} tensors differ after {killed} kills, e.g. {diff[:3]}"


# A non-default optimizer, schedule and step: Nesterov SGD's momentum buffers, the plateau's counters (patience 0:
# every epoch that does not improve decays) and SAM's two passes per step all come back from last.pt.
OPTIMISED = ["--opt", "sgd", "--sched", "plateau", "--plateau-patience", "0", "--sam", "--clip-grad", "1"]


@pytest.mark.slow  # ~100 s of CPU: two 2-epoch SAM runs, one killed twice
def test_sigkill_resume_with_sgd_plateau_and_sam_is_bit_identical(demo_run, tmp_path):
    args = [*TRAIN, *OPTIMISED, "--folds", str(demo_run["folds"]), "--fold", "0", "--workers", "0"]
    ref, resumed = tmp_path / "ref", tmp_path / "resumed"
    assert run_cli(*args, "-o", ref).code == 0
    assert _kill_and_resume([*args, "-o", str(resumed)], resumed, kills=2, seed=7) == 2
    a, b = (torch.load(r / "fold0" / "last.pt", weights_only=True) for r in (ref, resumed))
    assert a["scheduler"] == b["scheduler"] and a["scheduler"]["plateau"]["last_epoch"] == 2
    assert all(g["nesterov"] for g in b["optimizer"]["param_groups"])
    diff = [k for k in a["model"] if not torch.equal(a["model"][k], b["model"][k])]
    diff += [k for k, s in a["optimizer"]["state"].items()
             if not torch.equal(s["momentum_buffer"], b["optimizer"]["state"][k]["momentum_buffer"])]
    assert not diff, f"{len(diff)} tensors differ after 2 kills, e.g. {diff[:3]}"


def test_sigterm_saves_and_exits_130(demo_run, tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "kcomp.commands.main", "--quiet", *TRAIN, "--folds", str(demo_run["folds"]),
           "--workers", "0", "-o", str(run)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ckpt = run / "fold0" / "last.pt"
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("training finished before the signal arrived")
    assert proc.returncode == 130, err.decode()
    assert "re-run the same command to resume" in err.decode()
    pos = torch.load(ckpt, weights_only=True)["position"]
    assert pos["step"] >= 1


def test_resume_with_other_options_is_refused(demo_run, tmp_path):
    folds = ["--folds", str(demo_run["folds"]), "--workers", "0", "-o", str(tmp_path / "r")]
    base = ["train", "cls", "--img-size", "32", "--epochs", "1", "--batch-size", "32"]
    assert run_cli(*base, *folds).code == 0
    r = run_cli(*base, "--lr", "0.1", *folds)
    assert r.code == 2
    assert "lr" in r.last_error_line and "0.1" in r.last_error_line


def test_options_added_by_a_newer_kcomp_do_not_block_resume():
    from kcomp.runs import config

    old = config.resolve(task="cls", folds="f.parquet").to_config()
    del old["smoothing"]
    assert config.differences(old, config.resolve(task="cls", folds="f.parquet").to_config()) == []
    assert config.differences(old, config.resolve(task="cls", folds="f.parquet", smoothing=0.1).to_config()) == [
        "smoothing"]


# What last.pt held when run directories were first written (kcomp 0.1.0): a run directory from then must resume.
RELEASED_META = ("kcomp_version", "schema", "command")
RELEASED_STATE = ("task", "config", "setup", "fold", "model", "ema", "optimizer", "scheduler", "scaler", "rng",
                  "history", "position")
RELEASED_POSITION = ("epoch", "batch", "step", "best", "best_epoch", "loss_count", "loss_sum", "world_size")
_STOP_AFTER_FIRST_EPOCH = """
import sys
from kcomp.runs import tensorboard

def stop(*args, **kwargs):  # called once an epoch's last.pt and metrics are written
    raise KeyboardInterrupt

tensorboard.log_epoch = stop
from kcomp.commands.main import run
sys.argv = ["kcomp", "--quiet", *sys.argv[1:]]
run()
"""


def test_a_last_pt_in_the_released_layout_resumes_bit_identically(demo_run, uninterrupted, tmp_path):
    from kcomp.artifacts._meta import make_meta

    # the reference's options but --save-every, which saves more often and changes nothing else
    args = [*TRAIN[:TRAIN.index("--save-every")], "--folds", str(demo_run["folds"]), "--fold", "0", "--workers", "0"]
    run = tmp_path / "run"
    stopped = subprocess.run([sys.executable, "-c", _STOP_AFTER_FIRST_EPOCH, *args, "-o", str(run)],
                             capture_output=True, text=True, timeout=300)
    assert stopped.returncode == 130, stopped.stderr
    last = run / "fold0" / "last.pt"
    ck = torch.load(last, weights_only=True)
    meta = tuple(make_meta("checkpoint"))
    assert set(RELEASED_META) <= set(meta)
    assert tuple(k for k in ck if k not in meta) == RELEASED_STATE  # the writer keeps the layout, order included
    assert tuple(ck["position"]) == RELEASED_POSITION and ck["position"]["epoch"] == 1
    torch.save({k: ck[k] for k in RELEASED_META + RELEASED_STATE}, last)  # exactly the released keys
    r = run_cli(*args, "-o", run)
    assert r.code == 0, r.stderr
    a, b = _weights(uninterrupted), _weights(run)
    assert [k for k in a if not torch.equal(a[k], b[k])] == []

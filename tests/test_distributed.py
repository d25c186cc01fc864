"""DDP on CPU with gloo and 2 processes: the same training as one process at the global batch, exact resume,
sharded `oof` equal to the single-process one, and `--parallel-folds`.

The model is timm's tiny `test_convnext` (LayerNorm, no BatchNorm): without per-rank batch statistics, 2 ranks at
batch B compute the gradients of one process at batch 2B, so the curves agree to float rounding.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from kcomp.runtime import distributed, launch
from tests.conftest import run_cli

BASE = ["train", "cls", "--img-size", "32", "--epochs", "2", "--workers", "0", "--device", "cpu",
        "--model", "test_convnext", "--save-every", "1"]
DDP = ["--batch-size", "16", "--gpus", "2"]
FOLD0 = ["--fold", "0"]


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two ranks on two shared cores: one thread each, or they oversubscribe."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The demo data, one single-process run at batch 32 and one 2-rank DDP run at batch 16 (global 32)."""
    root = tmp_path_factory.mktemp("ddp")
    data = root / "data"
    assert run_cli("prep", "demo", "-o", data).code == 0
    assert run_cli("split", data / "index.parquet", "-o", data / "folds.parquet", "--folds", "2").code == 0
    folds = ["--folds", str(data / "folds.parquet")]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        single = run_cli(*BASE, *FOLD0, *folds, "--batch-size", "32", "-o", root / "single")
        assert single.code == 0, single.stderr
        ddp = run_cli(*BASE, *FOLD0, *folds, *DDP, "-o", root / "ddp")
        assert ddp.code == 0, ddp.stderr
    return {"root": root, "folds": data / "folds.parquet", "single": root / "single", "ddp": root / "ddp",
            "ddp_stdout": ddp.stdout}


def _metrics(run: Path) -> pd.DataFrame:
    return pd.read_parquet(run / "fold0" / "metrics.parquet")


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "fold0" / "last.pt", weights_only=True)["model"]


# --- launcher pieces (no processes) -------------------------------------------------------------------------------

def test_launcher_options_are_stripped_in_every_spelling():
    argv = ["--quiet", "train", "cls", "--gpus", "2", "--nodes=1", "--parallel-folds", "--master-addr", "h",
            "--fold", "all", "-o", "r"]
    assert launch.strip_options(argv, launch.LAUNCH_OPTIONS) == ["--quiet", "train", "cls", "--fold", "all", "-o", "r"]
    one_node = launch.torchrun_args(["train", "--gpus", "2"], gpus=2)
    assert one_node == ["--nproc-per-node", "2", "--standalone", "-m", "kcomp.commands.main", "train"]
    two = launch.torchrun_args(["oof", "r"], gpus=4, nodes=2, node_rank=1, master_addr="n0", master_port=1234)
    assert two[:10] == ["--nproc-per-node", "4", "--nnodes", "2", "--node-rank", "1", "--master-addr", "n0",
                        "--master-port", "1234"]


def test_parallel_fold_commands_deal_folds_round_robin():
    plan = launch.parallel_fold_commands(["train", "cls", "--fold", "all", "--gpus", "2", "--parallel-folds",
                                          "--json"], [0, 1, 2], slots=2)
    assert [(job.fold, job.slot) for job, _ in plan] == [(0, 0), (1, 1), (2, 0)]
    first, second = plan[0][1], plan[1][1]
    assert first[-5:] == ["train", "cls", "--fold", "0", "--json"] and "--quiet" not in first
    assert "--quiet" in second and "--gpus" not in second and "all" not in second


@pytest.mark.parametrize("n", [0, 1, 5, 6, 7])
def test_shards_cover_the_rows_in_order(n, monkeypatch):
    monkeypatch.setattr(distributed, "_active", lambda: True)
    monkeypatch.setenv("WORLD_SIZE", "3")
    parts = []
    for r in range(3):
        monkeypatch.setenv("RANK", str(r))
        lo, hi = distributed.shard_range(n)
        parts.append(np.arange(n)[lo:hi])
    assert np.array_equal(distributed.concat(parts), np.arange(n)) or n == 0
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert distributed.concat([[1], None, [], [2, 3]]) == [1, 2, 3]


def test_bad_launches_are_one_line_errors(tmp_path):
    from kcomp.errors import BadUsage

    if not torch.cuda.is_available():
        with pytest.raises(BadUsage, match=r"--gpus 2: this machine has 0 CUDA.*--device cpu"):
            launch.check(2, device="auto")
    with pytest.raises(BadUsage, match="--master-addr"):
        launch.check(2, nodes=2, device="cpu")
    with pytest.raises(BadUsage, match="--node-rank 2"):
        launch.check(2, nodes=2, node_rank=2, master_addr="n0", device="cpu")
    r = run_cli("train", "cls", "--folds", tmp_path / "f.parquet", "--gpus", "2", "--parallel-folds", "-o",
                tmp_path / "r")
    assert r.code == 2 and "--fold all" in r.last_error_line


# --- 2 ranks with gloo --------------------------------------------------------------------------------------------

def test_ddp_follows_the_single_process_loss_curve(runs):
    single, ddp = _metrics(runs["single"]), _metrics(runs["ddp"])
    assert list(ddp["epoch"]) == [1, 2] and list(ddp["step"]) == list(single["step"])
    np.testing.assert_allclose(ddp["train_loss"], single["train_loss"], rtol=1e-4)
    np.testing.assert_allclose(ddp["val_accuracy"], single["val_accuracy"], atol=1e-9)
    np.testing.assert_allclose(ddp["lr"], single["lr"], rtol=1e-9)
    a, b = _weights(runs["single"]), _weights(runs["ddp"])
    assert max((a[k].float() - b[k].float()).abs().max().item() for k in a) < 1e-4
    # written once, by rank 0: one path on stdout, one log line per epoch, the world size in the checkpoint
    assert runs["ddp_stdout"].split() == [str(runs["ddp"] / "fold0" / "best.pt")]
    assert len((runs["ddp"] / "fold0" / "train.log").read_text().splitlines()) == 2
    ck = torch.load(runs["ddp"] / "fold0" / "last.pt", weights_only=True)
    assert ck["position"]["world_size"] == 2 and len(ck["rng_ranks"]) == 2
    assert json.loads((runs["ddp"] / "config.json").read_text())["config"]["gpus"] == 2


def test_ddp_resume_after_sigterm_is_bit_identical(runs, tmp_path):
    run = tmp_path / "resumed"
    cmd = [sys.executable, "-m", "kcomp.commands.main", "--quiet", *BASE, *FOLD0, "--folds", str(runs["folds"]),
           *DDP,
           "-o", str(run)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ckpt = run / "fold0" / "last.pt"
    deadline = time.time() + 120
    while proc.poll() is None and not ckpt.exists() and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)  # to the launcher: torchrun forwards it, the ranks agree on a step and save
    _, err = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("training finished before the signal arrived")
    assert proc.returncode == 130, err.decode()
    assert torch.load(ckpt, weights_only=True)["position"]["step"] < 8  # 4 steps an epoch, 2 epochs
    # one process cannot continue what two started: the global batch would change mid-run
    r = run_cli(*BASE, *FOLD0, "--folds", runs["folds"], "--batch-size", "16", "-o", run)
    assert r.code == 2 and "2 process(es)" in r.last_error_line
    r = run_cli(*BASE, *FOLD0, "--folds", runs["folds"], *DDP, "-o", run)
    assert r.code == 0, r.stderr
    a, b = _weights(runs["ddp"]), _weights(run)
    assert all(torch.equal(a[k], b[k]) for k in a)
    pd.testing.assert_frame_equal(_metrics(runs["ddp"]).drop(columns=["seconds", "img_per_s"]),
                                  _metrics(run).drop(columns=["seconds", "img_per_s"]))


@pytest.mark.slow  # two more 2-epoch runs, one of them on 2 ranks
def test_ddp_with_sam_follows_the_single_process(runs, tmp_path):
    """SAM's two passes are both all-reduced: 2 ranks at batch 16 ascend and step as one process at batch 32."""
    sam = ["--sam", "--sam-rho", "0.1", "--opt", "sgd", "--clip-grad", "1", "--folds", str(runs["folds"])]
    single = run_cli(*BASE, *FOLD0, *sam, "--batch-size", "32", "-o", tmp_path / "single")
    ddp = run_cli(*BASE, *FOLD0, *sam, *DDP, "-o", tmp_path / "ddp")
    assert single.code == 0 and ddp.code == 0, single.stderr + ddp.stderr
    np.testing.assert_allclose(_metrics(tmp_path / "ddp")["train_loss"], _metrics(tmp_path / "single")["train_loss"],
                               rtol=1e-4)
    a, b = _weights(tmp_path / "single"), _weights(tmp_path / "ddp")
    assert max((a[k].float() - b[k].float()).abs().max().item() for k in a) < 1e-4
    plain = _weights(runs["single"])  # the same run without SAM ends elsewhere
    assert max((a[k].float() - plain[k].float()).abs().max().item() for k in a) > 1e-3


def test_sharded_oof_equals_single_process_oof(runs):
    root = runs["root"]
    one = run_cli("oof", runs["single"], "-o", root / "oof1.parquet", "--workers", "0", "--device", "cpu")
    two = run_cli("oof", runs["single"], "-o", root / "oof2.parquet", "--workers", "0", "--device", "cpu",
                  "--gpus", "2")
    assert one.code == 0 and two.code == 0, one.stderr + two.stderr
    assert two.stdout.split() == [str(root / "oof2.parquet")]  # rank 0 alone prints and writes
    a, b = pd.read_parquet(root / "oof1.parquet"), pd.read_parquet(root / "oof2.parquet")
    assert list(a["id"]) == list(b["id"]) and list(a["fold"]) == list(b["fold"]) and len(a) == 150
    np.testing.assert_allclose(np.stack(a["probs"]), np.stack(b["probs"]), atol=1e-6)
    assert (a["target"] == b["target"]).all()


def test_worker_errors_keep_their_exit_code(runs, tmp_path):
    r = run_cli(*BASE, "--folds", runs["folds"], *DDP, "--fold", "7", "-o", tmp_path / "r")
    assert r.code == 2 and "--fold 7" in r.last_error_line
    assert "Traceback" not in r.stderr and not r.stdout


def test_parallel_folds_train_every_fold(runs, tmp_path):
    run = tmp_path / "par"
    r = run_cli(*BASE, "--folds", runs["folds"], "--epochs", "1", "--batch-size", "32", "--fold", "all", "--gpus",
                "2", "--parallel-folds", "--json", "-o", run)
    assert r.code == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["written"] == [str(run / "fold0" / "best.pt"), str(run / "fold1" / "best.pt")]
    assert set(summary["folds"]) == {"0", "1"}
    for k in (0, 1):
        assert len(pd.read_parquet(run / f"fold{k}" / "metrics.parquet")) == 1
    # each fold is the ordinary single-process training: fold 0 matches the sequential run's first epoch
    first = _metrics(runs["single"]).iloc[0]["train_loss"]
    assert pd.read_parquet(run / "fold0" / "metrics.parquet").iloc[0]["train_loss"] == pytest.approx(first, rel=1e-6)


@pytest.mark.slow
def test_ddp_with_pseudo_rows_and_dropped_rows_follows_the_single_process(runs, tmp_path):
    """--extra and --drop change each rank's rows alike: 2 ranks train what one process trains at the global batch."""
    root = runs["root"]
    steps = [("oof", runs["single"], "-o", root / "oof.parquet"), ("tta", runs["single"], "-o", root / "test.parquet"),
             ("clean", root / "oof.parquet", "-o", root / "issues.parquet"),
             ("pseudo", root / "test.parquet", "-o", root / "pseudo.parquet", "--soft")]
    for step in steps:
        r = run_cli(*step, *(("--workers", "0", "--device", "cpu") if step[0] in ("oof", "tta") else ()))
        assert r.code == 0, r.stderr
    # fold 1 trains on fold 0's rows, where the OOF of the fold-0 run found its issues
    args = [*BASE, "--fold", "1", "--epochs", "1", "--folds", str(runs["folds"]),
            "--extra", str(root / "pseudo.parquet"), "--drop", str(root / "issues.parquet")]
    single = run_cli(*args, "--batch-size", "32", "-o", tmp_path / "single")
    ddp = run_cli(*args, *DDP, "-o", tmp_path / "ddp")
    assert single.code == 0 and ddp.code == 0, single.stderr + ddp.stderr
    a, b = (pd.read_parquet(tmp_path / r / "fold1" / "metrics.parquet") for r in ("single", "ddp"))
    np.testing.assert_allclose(b["train_loss"], a["train_loss"], rtol=1e-4)
    np.testing.assert_allclose(b["val_accuracy"], a["val_accuracy"], atol=1e-9)


def test_pspnet_trains_under_ddp(tmp_path):
    """smp's PSPNet runs its encoder to depth 3 only; the stages past it have no gradient, and DDP's reducer failed
    at the second step ("Expected to have finished reduction in the prior iteration") until they were frozen."""
    from tests.tiny_tasks import make_folds

    folds = make_folds("seg", tmp_path / "seg")
    r = run_cli("train", "seg", "--folds", folds, "--fold", "0", "--arch", "pspnet", "--model", "resnet18",
                "--img-size", "64", "--epochs", "2", "--batch-size", "2", "--workers", "0", "--device", "cpu",
                "--gpus", "2", "--no-pretrained", "-o", tmp_path / "run")
    assert r.code == 0, r.stderr
    ck = torch.load(tmp_path / "run" / "fold0" / "last.pt", weights_only=True)
    assert ck["position"]["step"] >= 2 and ck["position"]["world_size"] == 2
    assert "net.net.encoder.layer4.0.conv1.weight" in ck["model"]  # frozen, not dropped: checkpoints keep loading


def test_every_seg_architecture_gives_every_trainable_weight_a_gradient():
    """What DDP needs of a model: no parameter left without a gradient after a backward (`freeze_unused`)."""
    from kcomp.models.seg import ARCHS, create_seg_model

    for arch in ARCHS:
        side = 256 if arch == "pan" else 64  # PAN pools its 1/32 features 8x further
        model = create_seg_model(arch, "resnet18", 2)
        model(torch.randint(0, 256, (2, 3, side, side), dtype=torch.uint8)).sum().backward()
        lost = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
        assert not lost, f"{arch}: {lost[:3]}"


@pytest.mark.slow
def test_ddp_trains_frozen_then_unfrozen_with_a_balanced_sampler_as_one_process(tmp_path):
    """--freeze-epochs changes what DDP reduces at the unfreeze (the wrapper is rebuilt); --sampler balanced splits
    one draw across the ranks; 2 ranks at batch 4 train what one process trains at batch 8."""
    from tests.tiny_tasks import make_folds

    folds = make_folds("cls", tmp_path / "cls")
    args = [*BASE, *FOLD0, "--epochs", "3", "--folds", str(folds), "--freeze-epochs", "1", "--sampler", "balanced",
            "--class-weights", "balanced"]
    single = run_cli(*args, "--batch-size", "8", "-o", tmp_path / "single")
    ddp = run_cli(*args, "--batch-size", "4", "--gpus", "2", "-o", tmp_path / "ddp")
    assert single.code == 0 and ddp.code == 0, single.stderr + ddp.stderr
    np.testing.assert_allclose(_metrics(tmp_path / "ddp")["train_loss"], _metrics(tmp_path / "single")["train_loss"],
                               rtol=1e-4)
    a, b = _weights(tmp_path / "single"), _weights(tmp_path / "ddp")
    assert max((a[k].float() - b[k].float()).abs().max().item() for k in a) < 1e-4

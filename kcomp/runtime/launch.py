"""Launchers: the same kcomp command again as N data-parallel processes under torchrun, or as one single-process
training per fold running side by side (`--parallel-folds`).

Both re-run the user's own command line (minus the launcher options), so whatever `kcomp train` accepts works
here unchanged, and a worker is an ordinary kcomp process: it writes, resumes and exits like one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kcomp.errors import BadUsage

# Options consumed by the launcher, and whether each takes a value; workers never see them.
LAUNCH_OPTIONS: dict[str, bool] = {"--gpus": True, "--nodes": True, "--node-rank": True, "--master-addr": True,
                                   "--master-port": True, "--parallel-folds": False}
ENTRY = "kcomp.commands.main"


def strip_options(argv: Sequence[str], options: dict[str, bool]) -> list[str]:
    """argv without `options` (`--opt VALUE`, `--opt=VALUE` and flags alike)."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in options:
            skip = options[name] and "=" not in arg
            continue
        out.append(arg)
    return out


def check_options(gpus: int, nodes: int, node_rank: int, master_addr: str | None, master_port: int | None) -> None:
    """The launcher options' values, checked by train/oof/tta whether or not they launch anything."""
    from kcomp import options

    options.check({"gpus": gpus, "nodes": nodes, "node_rank": node_rank, "master_addr": master_addr,
                   "master_port": master_port}, options.LAUNCH)
    if node_rank >= nodes:
        raise BadUsage(f"--node-rank {node_rank}: must be in 0..{nodes - 1} for --nodes {nodes}")


def check(gpus: int, nodes: int = 1, node_rank: int = 0, master_addr: str | None = None,
          device: str = "auto") -> None:
    """Refuse impossible launches before any process starts, in the user's terms."""
    if gpus < 1:
        raise BadUsage(f"--gpus {gpus}: must be at least 1")
    if nodes < 1:
        raise BadUsage(f"--nodes {nodes}: must be at least 1")
    if not 0 <= node_rank < nodes:
        raise BadUsage(f"--node-rank {node_rank}: must be in 0..{nodes - 1} for --nodes {nodes}")
    if nodes > 1 and not master_addr:
        raise BadUsage(f"--nodes {nodes}: give --master-addr (the host of node rank 0) and the same --master-port "
                       f"on every node")
    if device == "cpu":
        return
    if device.startswith("cuda:"):
        raise BadUsage(f"--device {device} with --gpus {gpus}: each process picks its own GPU; use --device cuda")
    import torch

    have = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if have < gpus:
        hint = " (add --device cpu to run that many CPU processes with gloo)" if device == "auto" else ""
        raise BadUsage(f"--gpus {gpus}: this machine has {have} CUDA device(s){hint}")


def torchrun_args(argv: Sequence[str], *, gpus: int, nodes: int = 1, node_rank: int = 0,
                  master_addr: str | None = None, master_port: int | None = None) -> list[str]:
    """torch.distributed.run's arguments for `kcomp ARGV` on gpus processes per node. One node without an address
    uses a private rendezvous on a free port (two jobs on one box never collide); several nodes meet at
    MASTER_ADDR:MASTER_PORT (static rendezvous, as SLURM scripts usually do)."""
    args = ["--nproc-per-node", str(gpus)]
    if nodes == 1 and master_addr is None and master_port is None:
        args.append("--standalone")
    else:
        args += ["--nnodes", str(nodes), "--node-rank", str(node_rank), "--master-addr", master_addr or "127.0.0.1",
                 "--master-port", str(master_port or 29500)]
    return [*args, "-m", ENTRY, *strip_options(argv, LAUNCH_OPTIONS)]


def relaunch_under_torchrun(argv: Sequence[str], gpus: int, nodes: int = 1, node_rank: int = 0,
                            master_addr: str | None = None, master_port: int | None = None) -> int:
    """Run `kcomp ARGV` as `gpus` processes on this node under torch.distributed.run (its elastic agent runs in
    this process) and return the exit code to leave with: 0, the code of the first rank that failed (2 for bad
    input, 130 for an interrupted run that saved), or 130 when this launcher was interrupted. SIGINT/SIGTERM
    reach the workers through the agent, which forwards them and waits for the checkpoint to be written."""
    saved = os.environ.get("LOGLEVEL")
    # The agent's own log lines (rendezvous, "failed (exitcode: 2)") repeat what the workers already said on
    # stderr; its loggers read LOGLEVEL once, when created. LOGLEVEL=INFO shows them.
    os.environ["LOGLEVEL"] = saved or "CRITICAL"
    try:
        from torch.distributed.elastic.multiprocessing.api import SignalException
        from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
        from torch.distributed.run import get_args_parser, run
    finally:
        if saved is None:
            os.environ.pop("LOGLEVEL", None)
    if saved is None:  # modules logging through plain getLogger inherit from the package logger
        import logging

        logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    args = get_args_parser().parse_args(torchrun_args(argv, gpus=gpus, nodes=nodes, node_rank=node_rank,
                                                      master_addr=master_addr, master_port=master_port))
    try:
        run(args)
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        if failure.exitcode < 0:  # killed: the worker could not say so itself
            sys.stderr.write(f"kcomp: rank {rank} died from {failure.signal_name()}\n")
        return _exit_code(failure.exitcode)
    except SignalException:
        return 130
    return 0


def _exit_code(code: int) -> int:
    """A worker killed by signal N reports -N; a shell reports 128+N."""
    return 128 - code if code < 0 else code


@dataclass
class FoldJob:
    fold: int
    slot: int
    returncode: int | None = None
    stdout: str = ""


def parallel_fold_commands(argv: Sequence[str], folds: Sequence[int], slots: int) -> list[tuple[FoldJob, list[str]]]:
    """One `kcomp train ... --fold K --json` per fold, folds dealt round-robin to `slots`. Only slot 0 draws
    progress bars (several rich bars on one terminal garble each other); the others log to their train.log."""
    base = strip_options(argv, {**LAUNCH_OPTIONS, "--fold": True, "--json": False})
    out = []
    for i, k in enumerate(folds):
        slot = i % slots
        quiet = ["--quiet"] if slot > 0 else []
        out.append((FoldJob(k, slot), [sys.executable, "-m", ENTRY, *quiet, *base, "--fold", str(k), "--json"]))
    return out


def run_parallel_folds(argv: Sequence[str], folds: Sequence[int], slots: int, *, cuda: bool
                       ) -> tuple[int, list[FoldJob]]:
    """Train folds as independent processes, `slots` at a time (one per GPU via CUDA_VISIBLE_DEVICES when `cuda`).
    Returns (exit code, jobs): the first failure's code, after interrupting the other folds (they save last.pt and
    exit 130, so re-running the command resumes them); 130 when this process was interrupted."""
    plan = parallel_fold_commands(argv, folds, slots)
    queues: dict[int, list[tuple[FoldJob, list[str]]]] = {s: [p for p in plan if p[0].slot == s] for s in range(slots)}
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    gpu_ids = visible.split(",") if visible else [str(i) for i in range(slots)]
    running: dict[int, tuple[FoldJob, subprocess.Popen, Any]] = {}
    state = {"code": 0, "stopping": False}

    def interrupt_all() -> None:
        for _, proc, _ in running.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)

    def on_signal(signum: int, frame: Any) -> None:
        if not state["stopping"]:
            state.update(stopping=True, code=130)
        interrupt_all()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while True:
            for slot, queue in queues.items():
                if slot not in running and queue and not state["stopping"]:
                    job, cmd = queue.pop(0)
                    env = dict(os.environ)
                    if cuda:
                        env["CUDA_VISIBLE_DEVICES"] = gpu_ids[slot % len(gpu_ids)]
                    elif "OMP_NUM_THREADS" not in env:
                        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // slots))
                    out = tempfile.TemporaryFile()
                    running[slot] = (job, subprocess.Popen(cmd, stdout=out, env=env), out)
            if not running:
                break
            time.sleep(0.1)
            for slot in list(running):
                job, proc, out = running[slot]
                if proc.poll() is None:
                    continue
                job.returncode = _exit_code(proc.returncode)
                out.seek(0)
                job.stdout = out.read().decode(errors="replace")
                out.close()
                del running[slot]
                if job.returncode != 0 and not state["stopping"]:
                    state.update(stopping=True, code=job.returncode)
                    interrupt_all()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    return state["code"], [job for job, _ in plan]


def train_folds_in_parallel(argv: Sequence[str], folds_path: str, slots: int, device: str
                            ) -> tuple[int, list[str], dict[str, Any]]:
    """`kcomp train --fold all --parallel-folds --gpus N`: every fold of the folds file as its own single-process
    training, N at a time, one GPU each (CPU processes with --device cpu). Returns (exit code, best.pt paths in
    fold order, the summary `kcomp train --json` prints)."""
    import json

    from kcomp.artifacts import read_index

    if slots < 2:
        raise BadUsage(f"--parallel-folds trains --gpus N folds at once; got --gpus {slots}")
    if device.startswith("cuda:"):
        raise BadUsage(f"--device {device} with --parallel-folds: each fold gets its own GPU; use --device cuda")
    cuda = device != "cpu"
    if cuda:  # auto or cuda: one GPU per fold, never CPU folds that nobody asked for
        import torch

        have = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if have < slots:
            raise BadUsage(f"--gpus {slots} --parallel-folds: this machine has {have} CUDA device(s)"
                           + (" (add --device cpu to train folds as parallel CPU processes)" if not have else ""))
    df = read_index(folds_path, "folds").df
    folds = sorted(int(f) for f in df["fold"].unique() if f >= 0)
    code, jobs = run_parallel_folds(argv, folds, slots, cuda=cuda)
    if code != 0:
        return code, [], {}
    written: list[str] = []
    per_fold: dict[str, Any] = {}
    metric = None
    for job in jobs:
        summary = json.loads(job.stdout.strip().splitlines()[-1])
        written += summary["written"]
        per_fold.update(summary["folds"])
        metric = metric or summary.get("metric")
    scores = [v["score"] for v in per_fold.values()]
    return 0, written, {"metric": metric, "folds": per_fold,
                        "mean": sum(scores) / len(scores) if scores else None}

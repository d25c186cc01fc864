"""Options shared by `train`, `oof` and `tta` for running on several GPUs or nodes: the re-launch under torchrun,
rank 0 as the only one that prints, and `train --parallel-folds`.

Kept apart from `_common` so the commands that do not launch anything stay as they are; nothing heavy is imported
until a launch actually happens.
"""

from __future__ import annotations

import sys
from functools import partial
from typing import Annotated

import typer

from kcomp.commands._common import DEVICES

Opt = partial(typer.Option, rich_help_panel=DEVICES)
Gpus = Annotated[int, Opt(help="Data-parallel processes on this node (one per GPU; with --device cpu, CPU processes "
                               "using gloo). >1 re-runs this command under torchrun.")]
Nodes = Annotated[int, Opt(help="Nodes taking part (run the same command on each; see docs/cluster.md).")]
NodeRank = Annotated[int, Opt(help="This node's rank, 0..nodes-1 (SLURM: $SLURM_NODEID).")]
MasterAddr = Annotated[str | None, Opt(help="Host of node rank 0 (needed with --nodes > 1).")]
MasterPort = Annotated[int | None, Opt(help="Rendezvous port on --master-addr. Default 29500 (one node without "
                                            "--master-addr: a free port).")]


def check_launch(gpus: int, nodes: int, node_rank: int, master_addr: str | None, master_port: int | None) -> None:
    """Refuse impossible launcher option values before the command does anything, launching or not."""
    from kcomp.runtime.launch import check_options

    check_options(gpus, nodes, node_rank, master_addr, master_port)


def relaunch_if_asked(gpus: int, nodes: int, node_rank: int, master_addr: str | None, master_port: int | None,
                      device: str) -> None:
    """With --gpus > 1 or --nodes > 1, outside torchrun: run this same command line under torchrun and leave with
    its exit code. Under torchrun (re-launched, or started by the user's own torchrun/srun) it returns at once."""
    from kcomp.runtime import distributed

    if distributed.under_torchrun() or (gpus <= 1 and nodes <= 1):
        return
    from kcomp.runtime import launch

    launch.check(gpus, nodes, node_rank, master_addr, device)
    raise SystemExit(launch.relaunch_under_torchrun(sys.argv[1:], gpus=gpus, nodes=nodes, node_rank=node_rank,
                                                    master_addr=master_addr, master_port=master_port))


def is_main() -> bool:
    """Under torchrun only rank 0 prints paths and summaries; other ranks exit quietly."""
    from kcomp.runtime import distributed

    return distributed.is_main()


def under_torchrun() -> bool:
    from kcomp.runtime import distributed

    return distributed.under_torchrun()


def layout(gpus: int, nodes: int) -> dict[str, int]:
    """What config.json records: the processes per node and the nodes actually running (torchrun's when under it,
    since re-launched workers no longer see --gpus)."""
    import os

    if under_torchrun():
        per_node = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
        return {"gpus": per_node, "nodes": max(1, int(os.environ.get("WORLD_SIZE", 1)) // per_node)}
    return {"gpus": gpus, "nodes": nodes}


def parallel_folds(folds: str, fold: str, gpus: int, device: str, as_json: bool) -> None:
    """`train --fold all --parallel-folds`: one `kcomp train --fold K` process per fold, --gpus at a time, with the
    output `--fold all` prints; a failed or interrupted fold's exit code is this command's."""
    from kcomp.commands._common import emit, log
    from kcomp.errors import BadUsage
    from kcomp.runtime.launch import train_folds_in_parallel

    if fold != "all":
        raise BadUsage(f"--parallel-folds trains several folds at once; use --fold all, not --fold {fold}")
    code, written, summary = train_folds_in_parallel(sys.argv[1:], folds, gpus, device)
    if code != 0:
        raise SystemExit(code)
    for k, r in summary["folds"].items():
        log(f"fold {k}: best {summary['metric']} {r['score']:.4f} at epoch {r['epoch']}")
    emit(written, summary, as_json)

"""`kcomp ARGS` in this process, as the console script runs it, then its peak memory on the way out: the largest
GPU allocation (`torch.cuda.max_memory_allocated`, where CUDA was used) and the peak resident set size, as JSON in
the file $KCOMP_CHECK_PEAK. Used by gpu_check.py for every command it runs."""

from __future__ import annotations

import atexit
import json
import os
import resource
import sys
from pathlib import Path


def _report() -> None:
    out: dict[str, float] = {"rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        out["gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    Path(os.environ["KCOMP_CHECK_PEAK"]).write_text(json.dumps(out))


if __name__ == "__main__":
    if os.environ.get("KCOMP_CHECK_PEAK"):
        atexit.register(_report)
    from kcomp.commands.main import run

    sys.argv = ["kcomp", *sys.argv[1:]]
    run()

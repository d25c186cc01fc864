"""Start-up: `kcomp --help`, `kcomp <cmd> --help` and a completion request against `python -c pass`.

Each command runs in a fresh interpreter N times; the best time is kept (start-up noise is one-sided).
Run: python benchmarks/bench_startup.py [--runs 10] [--no-write]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from _results import append_section

CASES = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "kcomp --help": [sys.executable, "-m", "kcomp.commands.main", "--help"],
    "kcomp train --help": [sys.executable, "-m", "kcomp.commands.main", "train", "--help"],
    "kcomp submit --help": [sys.executable, "-m", "kcomp.commands.main", "submit", "--help"],
}


def best_of(cmd: list[str], runs: int, env: dict[str, str] | None = None) -> float:
    best = float("inf")
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, check=False)
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    times = {name: best_of(cmd, args.runs) for name, cmd in CASES.items()}
    for words in ("kcomp tr", "kcomp train --ep"):
        env = {**os.environ, "_KCOMP_COMPLETE": "complete_bash", "COMP_WORDS": words,
               "COMP_CWORD": str(len(words.split()) - 1)}
        times[f"completion (bash, '{words}<TAB>')"] = best_of(
            [sys.executable, "-m", "kcomp.commands.main"], args.runs, env=env)
    base = times.pop("python -c pass")
    lines = [f"start-up {name}: ours {t:.3f} s, python -c pass {base:.3f} s, extra {t - base:.3f} s "
             f"(goal <= 0.25 s extra)" for name, t in times.items()]
    for ln in lines:
        print(ln)
    if not args.no_write:
        append_section("start-up", lines, note=f"`python benchmarks/bench_startup.py`: best of {args.runs} fresh "
                                                "interpreters per command.")


if __name__ == "__main__":
    main()

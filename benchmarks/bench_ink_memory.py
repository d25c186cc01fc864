"""Peak memory of `kcomp tta` (task ink) against fragment area and tile size.

Run: python benchmarks/bench_ink_memory.py [--small 512] [--large 1536] [--patches 64,256] [--no-old] [--no-write]

Builds a tiny Vesuvius layout (2 training fragments), trains one 1-epoch run per --patch, then predicts one test
fragment of each size with `kcomp tta RUN INDEX --tta 1 --workers 0` in a fresh process and reads that process's
peak RSS (ru_maxrss of a wrapper's only child). `--no-old` skips the comparison with the previous reader (layers
memory-mapped with no page release: RSS grew by every layer byte touched). Appends the lines, with machine info,
to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _results import append_section

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.vesuvius_fixture import make_vesuvius_layout  # noqa: E402

N_LAYERS, LAYERS = 65, "5x7"

# The wrapper runs the CLI in a child and prints the child's peak RSS (KiB on Linux). With OLD=1 the child uses the
# previous LayerStack.read (slices of whole-layer memory maps, nothing released) for comparison.
CHILD = r"""
import os, runpy, sys
if os.environ.get("KCOMP_BENCH_OLD") == "1":
    import numpy as np
    from kcomp.data.layers import LayerStack
    def old_read(self, layers, y0, y1, x0, x1):
        h, w = self.shape
        out = np.zeros((len(layers), y1 - y0, x1 - x0), dtype=self.dtype)
        cy0, cy1, cx0, cx1 = max(y0, 0), min(y1, h), max(x0, 0), min(x1, w)
        if cy0 < cy1 and cx0 < cx1:
            for k, i in enumerate(layers):
                out[k, cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0] = self.layer(int(i))[cy0:cy1, cx0:cx1]
        return out
    LayerStack.read = old_read
sys.argv = ["kcomp", *sys.argv[1:]]
runpy.run_module("kcomp.commands.main", run_name="__main__")
"""
WRAPPER = r"""
import resource, subprocess, sys
r = subprocess.run([sys.executable, "-c", sys.argv[1], *sys.argv[2:]])
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
sys.exit(r.returncode)
"""


def kcomp(*args: str | Path) -> None:
    r = subprocess.run([sys.executable, "-m", "kcomp.commands.main", "--quiet", *map(str, args)],
                       capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"kcomp {args[0]} failed:\n{r.stderr}")


def peak_rss_mib(args: list[str | Path], *, old: bool = False) -> tuple[float, float]:
    """(peak RSS MiB, seconds) of `kcomp ARGS` run alone in a fresh interpreter."""
    import os

    env = {**os.environ, "KCOMP_BENCH_OLD": "1" if old else "0"}
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", WRAPPER, CHILD, "--quiet", *map(str, args)], capture_output=True,
                       text=True, env=env)
    if r.returncode:
        sys.exit(f"kcomp {args[0]} failed:\n{r.stderr}")
    return int(r.stdout.strip().splitlines()[-1]) / 1024, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", type=int, default=512)
    ap.add_argument("--large", type=int, default=1536)
    ap.add_argument("--patches", default="64,256")
    ap.add_argument("--no-old", action="store_true")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    patches = [int(p) for p in args.patches.split(",")]
    sizes = (args.small, args.large)
    lines: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench_ink_memory_") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        tr = max(patches) + 32
        raw = make_vesuvius_layout(tmp / "raw_train", fragments={"1": (tr, tr), "2": (tr + 32, tr)}, test={},
                                   n_layers=N_LAYERS)
        kcomp("prep", "vesuvius", raw, "-o", tmp / "d")
        kcomp("split", tmp / "d" / "index.parquet", "-o", tmp / "d" / "folds.parquet", "--folds", "2",
              "--strategy", "group")
        runs = {}
        for p in patches:
            runs[p] = tmp / f"run{p}"
            kcomp("train", "ink", "--folds", tmp / "d" / "folds.parquet", "--fold", "0", "--layers", LAYERS,
                  "--patch", p, "--model", "resnet18", "--epochs", "1", "--batch-size", "8", "--workers", "0",
                  "-o", runs[p])
        indexes = {}
        for s in sizes:
            raw_s = make_vesuvius_layout(tmp / f"raw{s}", fragments={}, test={"t": (s, s)}, n_layers=N_LAYERS)
            kcomp("prep", "vesuvius", raw_s, "-o", tmp / f"d{s}")
            indexes[s] = tmp / f"d{s}" / "index.parquet"
        print(f"setup {time.perf_counter() - t0:.0f} s", file=sys.stderr)

        a1, a2 = sizes[0] ** 2, sizes[1] ** 2
        # what legitimately scales with area, per fragment: the uint8 output map (1 B/px), the mask PNG decoded to
        # uint8 then bool (2 B/px), the map gathered for writing (~1 B/px): ~4 B/px
        legit = 4 * (a2 - a1) / 2**20
        layer_bytes = 35 * 2 * (a2 - a1) / 2**20  # 35 uint16 layers read once each
        for p in patches:
            res = {}
            for old in ([False] if args.no_old else [False, True]):
                for s in sizes:
                    res[old, s] = peak_rss_mib(["tta", runs[p], indexes[s], "-o", tmp / f"pred{p}_{s}.parquet",
                                                "--tta", "1", "--workers", "0", "--device", "cpu"], old=old)
                x, y = res[old, sizes[0]][0], res[old, sizes[1]][0]
                who = "previous reader (whole-layer mmap)" if old else "kcomp"
                line = (f"ink tta peak RSS ({who}, --patch {p}, {LAYERS} layers of {N_LAYERS} uint16, --tta 1, cpu): "
                        f"area {sizes[0]}x{sizes[0]} -> {x:.0f} MiB, area {sizes[1]}x{sizes[1]} "
                        f"({a2 / a1:.0f}x larger) -> {y:.0f} MiB, ratio {y / x:.2f}, difference {y - x:.0f} MiB "
                        f"(output map + mask account for ~{legit:.0f} MiB; the 35 layers read are "
                        f"{layer_bytes:.0f} MiB more; tta {res[old, sizes[0]][1]:.0f} s / {res[old, sizes[1]][1]:.0f} s)")
                print(line, flush=True)
                lines.append(line)
        if len(patches) > 1:
            small = [f"--patch {p}: {res_p:.0f} MiB" for p, res_p in
                     ((p, peak_rss_mib(["tta", runs[p], indexes[sizes[1]], "-o", tmp / f"again{p}.parquet", "--tta",
                                         "1", "--workers", "0", "--device", "cpu"])[0]) for p in patches)]
            line = f"ink tta peak RSS on the {sizes[1]}x{sizes[1]} fragment by tile size: " + ", ".join(small)
            print(line)
            lines.append(line)
    if not args.no_write:
        import torch

        append_section("ink tta memory", lines, extra=f"torch {torch.__version__}",
                       note="Peak RSS of a fresh `kcomp tta RUN INDEX --workers 0` process (ru_maxrss), one test "
                            "fragment per index; the process baseline (Python + torch + model) is most of it.")


if __name__ == "__main__":
    main()

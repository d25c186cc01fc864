"""Peak memory of `kcomp tta` (task ink) against fragment area and tile size.

Run: python benchmarks/bench_ink_memory.py [--small 512] [--large 1536] [--patches 64,256] [--no-old]
     [--malloc-fixed] [--trace] [--no-write]

Builds a tiny Vesuvius layout (2 training fragments), trains one 1-epoch run per --patch, then predicts one test
fragment of each size with `kcomp tta RUN INDEX --tta 1 --workers 0` in a fresh process and reads that process's
peak RSS (ru_maxrss of a wrapper's only child). The child also reports its resident memory right after predicting
the fragment, split into file-backed pages (layer pages still mapped) and anonymous memory, and with --trace the
peak of numpy/Python allocations (tracemalloc), which together show where growth with area comes from. glibc keeps
freed blocks of up to its (dynamically raised) mmap threshold on the heap, so peak RSS varies by tens of MiB with
the allocation history; `--malloc-fixed` fixes the threshold in the children so the peak follows live memory.

Readers compared (`--no-old` keeps only kcomp's): "previous release" = the reader that released only the window's
byte range after each copy (pages the kernel mapped around it, by fault-around or whole page-cache folios, stayed
mapped: ~30 B/px), "whole-layer mmap" = slices of memory-mapped layers with no release (RSS grew by every layer
byte touched). Appends the lines, with machine info, to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
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

# The wrapper runs the CLI in a child and prints the child's peak RSS (KiB on Linux). With OLD=map the child uses
# slices of whole-layer memory maps (nothing released), with OLD=range the release of the window's byte range only.
# The child prints a PROBE line at exit: the tracemalloc peak (with TRACE=1 only: tracing costs ~150 MiB of RSS
# itself), then RssAnon and RssFile (kB, /proc/self/status) as they were right after the last predict_region returned
# (the fragment's layer maps still open: pages left mapped show as RssFile).
CHILD = r"""
import atexit, os, runpy, sys, tracemalloc
if os.environ.get("KCOMP_BENCH_TRACE") == "1":
    tracemalloc.start()
_after = {}
def _status():
    status = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return {k: int(status.get(k, "0 kB").split()[0]) for k in ("RssAnon", "RssFile")}
import kcomp.infer.sliding as _sliding
_region = _sliding.predict_region
def _probed(*a, **k):
    out = _region(*a, **k)
    _after.update(_status())
    return out
_sliding.predict_region = _probed
def _probe():
    print(f"PROBE {tracemalloc.get_traced_memory()[1]} {_after.get('RssAnon', 0)} {_after.get('RssFile', 0)}",
          file=sys.stderr)
atexit.register(_probe)
if os.environ.get("KCOMP_BENCH_OLD") == "range":
    import mmap
    import numpy as np
    from kcomp.data.layers import LayerStack
    def range_release(self, i, raw, dst, y, x):
        offset, disk = raw
        w, size = self.shape[1], disk.itemsize
        rows, cols = dst.shape
        first, end = offset + y * w * size, offset + (y + rows) * w * size
        m = self._maps.get(i)
        if m is None:
            m = self._maps[i] = self._map(i)
        arr = np.frombuffer(m, dtype=disk, count=self.shape[0] * w, offset=offset).reshape(self.shape)
        dst[...] = arr[y:y + rows, x:x + cols]
        del arr
        start = first // mmap.PAGESIZE * mmap.PAGESIZE
        m.madvise(mmap.MADV_DONTNEED, start, min(end, len(m)) - start)
    LayerStack._read_raw = range_release
if os.environ.get("KCOMP_BENCH_OLD") == "map":
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


READERS = {"kcomp": "kcomp", "range": "previous release (window rows only)", "map": "whole-layer mmap"}


TRACE = False  # --trace
# --malloc-fixed: glibc's mmap threshold fixed at 128 KiB (no dynamic raise), so freed batch-sized blocks go back to
# the system instead of staying on the heap; peak RSS then follows live memory (tens of MiB less run-to-run noise)
MALLOC: dict[str, str] = {}


def peak_rss_mib(args: list[str | Path], *, old: str = "kcomp") -> tuple[float, float, dict[str, float]]:
    """(peak RSS MiB, seconds, at-exit probe in MiB) of `kcomp ARGS` run alone in a fresh interpreter."""

    env = {**os.environ, "KCOMP_BENCH_OLD": old, "KCOMP_BENCH_TRACE": "1" if TRACE else "0", **MALLOC}
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", WRAPPER, CHILD, "--quiet", *map(str, args)], capture_output=True,
                       text=True, env=env)
    if r.returncode:
        sys.exit(f"kcomp {args[0]} failed:\n{r.stderr}")
    probe = [ln.split()[1:] for ln in r.stderr.splitlines() if ln.startswith("PROBE ")][-1]
    at_exit = {"traced": int(probe[0]) / 2**20, "anon": int(probe[1]) / 1024, "file": int(probe[2]) / 1024}
    return int(r.stdout.strip().splitlines()[-1]) / 1024, time.perf_counter() - t, at_exit


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", type=int, default=512)
    ap.add_argument("--large", type=int, default=1536)
    ap.add_argument("--patches", default="64,256")
    ap.add_argument("--no-old", action="store_true")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--malloc-fixed", action="store_true", help="children run with glibc's mmap threshold fixed "
                                                                "(peak RSS follows live memory)")
    ap.add_argument("--trace", action="store_true", help="also trace numpy/Python allocations (tracemalloc) in the "
                                                          "child; raises every peak by the tracing's own memory")
    args = ap.parse_args()
    global TRACE
    TRACE = args.trace
    if args.malloc_fixed:
        MALLOC.update(MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072")
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
                  "--no-pretrained", "-o", runs[p])
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
            for old in (["kcomp"] if args.no_old else ["kcomp", "range", "map"]):
                for s in sizes:
                    res[old, s] = peak_rss_mib(["tta", runs[p], indexes[s], "-o", tmp / f"pred{p}_{s}.parquet",
                                                "--tta", "1", "--workers", "0", "--device", "cpu"], old=old)
                (x, tx, ex), (y, ty, ey) = res[old, sizes[0]], res[old, sizes[1]]
                px = (a2 - a1) / 2**20  # MiB of pixels: differences / px = bytes per pixel
                line = (f"ink tta peak RSS ({READERS[old]}, --patch {p}, {LAYERS} layers of {N_LAYERS} uint16, "
                        f"--tta 1, cpu): area {sizes[0]}x{sizes[0]} -> {x:.0f} MiB, area {sizes[1]}x{sizes[1]} "
                        f"({a2 / a1:.0f}x larger) -> {y:.0f} MiB, ratio {y / x:.2f}, difference {y - x:.0f} MiB "
                        f"= {(y - x) / px:.1f} B/px (output map + mask account for ~{legit:.0f} MiB; the 35 layers "
                        f"read are {layer_bytes:.0f} MiB more); after predict_region, large minus small: file-backed "
                        f"{(ey['file'] - ex['file']) / px:.1f} B/px, anonymous {(ey['anon'] - ex['anon']) / px:.1f} "
                        f"B/px" + (f", numpy/Python peak (tracemalloc, adds to every RSS figure) "
                                   f"{(ey['traced'] - ex['traced']) / px:.1f} B/px ({ex['traced']:.0f} -> "
                                   f"{ey['traced']:.0f} MiB)" if TRACE else "") + f"; tta {tx:.0f} s / {ty:.0f} s")
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
                       note=f"`python benchmarks/bench_ink_memory.py {' '.join(sys.argv[1:])}`. Peak RSS of a fresh "
                            "`kcomp tta RUN INDEX --workers 0` process (ru_maxrss), one test fragment per index; the "
                            "process baseline (Python + torch + model) is most of it. Load average "
                            f"{os.getloadavg()[0]:.2f} at the end.")


if __name__ == "__main__":
    main()

#!/usr/bin/env bash
# Every benchmark, one after another; each prints `name: ours X, reference Y, ratio Z` lines and appends them,
# with the machine, to benchmarks/RESULTS.md (SCALING.md is rewritten). Not part of CI.
# About 10-12 minutes on 2 idle CPU cores. Usage: bash benchmarks/run_all.sh
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python}
run() { echo "== $*" >&2; "$PY" "$@"; }
run bench_startup.py
run bench_rle.py --repeats 5
run bench_seg_threshold.py
run bench_ink_threshold.py --no-full
run bench_wbf.py --images 200
run bench_dicom_prep.py --images 40
run bench_loop.py
run bench_scaling.py
run bench_ink_memory.py --patches 64 --no-old

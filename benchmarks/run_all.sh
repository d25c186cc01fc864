#!/usr/bin/env bash
# Every benchmark, one after another; each prints `name: ours X, reference Y, ratio Z` lines and appends them,
# with the machine, to benchmarks/RESULTS.md (SCALING.md is rewritten). Not part of CI.
# About 13 minutes on 2 idle CPU cores (budget: 15). Usage: bash benchmarks/run_all.sh
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python}
run() { local t0=$SECONDS; echo "== $*" >&2; "$PY" "$@"; echo "== $1: $((SECONDS - t0)) s" >&2; }
run bench_startup.py
run bench_rle.py --repeats 3
run bench_seg_threshold.py
run bench_ink_threshold.py --no-full
run bench_wbf.py --images 100 --scattered 200 --repeats 1 --budget 10
run bench_dicom_prep.py --images 24
run bench_loop.py --test-images 480 --train-repeats 2
run bench_ink_infer.py --size 768 --tta-size 384
run bench_scaling.py
run bench_ink_memory.py --patches 64 --no-old

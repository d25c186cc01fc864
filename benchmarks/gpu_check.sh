#!/usr/bin/env bash
# The whole GPU path of kcomp in a few minutes (at most 8 on one GPU): every task's pipeline on small data, each
# --amp mode, --deterministic for every task and seg architecture, --compile, the loops against the model-only
# limit, peak GPU memory, and with 2+ GPUs DDP and --parallel-folds. Prints one table, appends it to
# benchmarks/RESULTS.md with the GPU's name, exits 1 if any step failed (benchmarks/gpu_check.py says what runs).
#   bash benchmarks/gpu_check.sh                          # on the machine's CUDA GPU(s)
#   KCOMP_CHECK_DEVICE=cpu bash benchmarks/gpu_check.sh   # the same steps on the CPU (checks the script itself)
# KCOMP_CHECK_RESULTS=FILE appends the table elsewhere; KCOMP_CHECK_KEEP=1 keeps the work directory and its logs.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python}" benchmarks/gpu_check.py "$@"

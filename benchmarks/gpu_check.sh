#!/usr/bin/env bash
# GPU check for a lent GPU machine; run from anywhere, finishes in under 6 minutes:
#
#   bash benchmarks/gpu_check.sh                 # CUDA: nvidia-smi, 1-minute AMP run vs fp32, steps, inference, CSL
#   bash benchmarks/gpu_check.sh --device cpu --quick   # smoke test of the script itself
#
# Writes $OUT/gpu_report.md when OUT is set, else benchmarks/GPU_REPORT.md. Add it to the performance report
# with: python -m benchmarks.perf --append-gpu FILE
set -u
cd "$(dirname "$0")/.." || exit 1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
PY="${PYTHON:-$(command -v python3 || command -v python)}"
echo "== nvidia-smi"
nvidia-smi 2>&1 || echo "nvidia-smi not available"
echo "== python -m benchmarks.gpu_check $*"
# The Python side stops starting new work after --budget-s (default 330 s); this is the hard stop.
timeout -k 10 350 "$PY" -m benchmarks.gpu_check "$@"
rc=$?
[ "$rc" -eq 124 ] && echo "benchmarks.gpu_check was stopped at 350 s; the report holds what was measured before"
exit "$rc"

#!/usr/bin/env bash
# GPU check for a lent GPU machine; run from anywhere, finishes in under 5 minutes:
#
#   bash benchmarks/gpu_check.sh                 # CUDA: nvidia-smi, AMP training steps, inference, CSL
#   bash benchmarks/gpu_check.sh --device cpu --quick   # smoke test of the script itself
#
# Writes $OUT/gpu_report.md when OUT is set, else benchmarks/GPU_REPORT.md. Add it to the performance report
# with: python benchmarks/perf.py --append-gpu FILE
set -u
cd "$(dirname "$0")/.." || exit 1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
PY="${PYTHON:-$(command -v python3 || command -v python)}"
echo "== nvidia-smi"
nvidia-smi 2>&1 || echo "nvidia-smi not available"
echo "== gpu_check.py $*"
# The Python side stops starting new work after --budget-s (default 270 s); this is the hard stop.
timeout -k 10 290 "$PY" benchmarks/gpu_check.py "$@"
rc=$?
[ "$rc" -eq 124 ] && echo "gpu_check.py was stopped at 290 s; the report holds what was measured before"
exit "$rc"

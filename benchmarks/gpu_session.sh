#!/usr/bin/env bash
# One lent-GPU session in one call (issue 16): the CUDA tests of the engine, the GPU check, and an epoch-matched
# exploration of the levers on the dev split (one process per category, side by side on the one GPU).
#
#   bash benchmarks/gpu_session.sh            # on the lent machine; reports under $OUT (else results/gpu_session)
#
# Needs data/real_bench (python -m benchmarks.real_data) and results/real_bench*.json for the epoch rates.
set -u
cd "$(dirname "$0")/.." || exit 1
OUT="${OUT:-results/gpu_session}"
W=$(mktemp -d)  # reports and logs of the exploration; $OUT gets the JSONs and one archive (few files come back)
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False PYTHONUNBUFFERED=1
PY="${PYTHON:-$(command -v python3 || command -v python)}"
T0=$(date +%s)
nvidia-smi -L
echo "== GPU check ($(($(date +%s) - T0)) s)"
timeout -k 5 "${CHECK_S:-230}" "$PY" -m benchmarks.gpu_check --budget-s "${CHECK_BUDGET_S:-170}" --amp-minutes 0.75 \
    --out "$OUT/gpu_report.md" > "$OUT/gpu_check.log" 2>&1
echo "gpu_check rc $?"
echo "== exploration + CUDA tests ($(($(date +%s) - T0)) s)"
METHODS="stfpm ikd ikd+score ikd+reverse rd ikd+denoise ikd+ood ikd+reverse+denoise ikd+denoise+score ikd+denoise+ood ikd+all"
for cat in ${CATEGORIES:-real_skimage_grass real_skimage_gravel real_skimage_brick}; do
    OMP_NUM_THREADS=3 timeout -k 5 "${EXPLORE_S:-280}" "$PY" -m benchmarks.real_bench --split dev --categories "$cat" \
        --minutes "${MINUTES:-3}" --seeds 0 1 --methods $METHODS --candidate ikd+denoise \
        --epochs-like results/real_bench.json results/real_bench_rates.json \
        --out "$W/dev_$cat.md" > "$W/dev_$cat.log" 2>&1 &
done
OMP_NUM_THREADS=3 timeout -k 5 "${TESTS_S:-240}" "$PY" -m pytest -q -p no:cacheprovider tests/test_amp.py \
    tests/test_anomaly_synthesis.py tests/test_levers.py tests/test_reverse.py tests/test_model.py tests/test_loss.py \
    > "$OUT/cuda_tests.log" 2>&1
echo "tests rc $? ($(($(date +%s) - T0)) s)"
tail -3 "$OUT/cuda_tests.log"
wait
echo "== done ($(($(date +%s) - T0)) s)"
tail -n 4 "$W"/dev_*.log
cp "$W"/dev_*.json "$OUT"/ 2>/dev/null
tar czf "$OUT/logs.tgz" -C "$W" .

#!/usr/bin/env bash
# Space rehearsal: run IKD Studio the way a Hugging Face Space does, on 2 CPU threads, and time it.
#
#   1. builds exactly the files a Space receives (`git archive` of a commit: no data/, no runs/, no
#      uncommitted changes);
#   2. creates a fresh venv and installs requirements.txt alone (timed);
#   3. starts `python app.py` from the built folder with SPACE_ID set, 2 threads, pinned to CPUs 0,1
#      (time to serving = process start until GET / answers 200);
#   4. drives a browser journey (scripts/space_journey.py, with the development python, which has
#      Playwright): example -> upload -> 1-epoch training -> GIF export;
#   5. prints a markdown summary (install, time to serving, first heatmap, each step, peak RSS) and exits
#      non-zero when any stage fails. The app is stopped at exit.
#
# Usage: scripts/space_rehearsal.sh [--ref REV] [--work DIR] [--venv DIR] [--reuse-venv] [--artifacts DIR]
#                                   [--serve-timeout S] [--train-timeout S]
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: scripts/space_rehearsal.sh [options]
  --ref REV            commit to rehearse (default HEAD; only committed files reach a Space)
  --work DIR           work folder (default /tmp/ikd-space-rehearsal): space/, venv/, logs, screenshots
  --venv DIR           venv location (default WORK/venv)
  --reuse-venv         keep an existing venv (install time is then not measured)
  --artifacts DIR      screenshots and journey.json (default WORK/artifacts)
  --serve-timeout S    seconds to wait for GET / == 200 (default 900)
  --train-timeout S    seconds to wait for the 1-epoch training (default 1200)
Environment: DEV_PYTHON (default python3) runs the Playwright journey.
EOF
}

ORIG_ARGS="$*"
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(git -C "$SCRIPT_DIR" rev-parse --show-toplevel)
REF=HEAD
WORK=/tmp/ikd-space-rehearsal
VENV=""
REUSE=0
ARTIFACTS=""
SERVE_TIMEOUT=900
TRAIN_TIMEOUT=1200
DEV_PYTHON=${DEV_PYTHON:-python3}

while (($#)); do
    case $1 in
        --ref) REF=$2; shift 2 ;;
        --work) WORK=$2; shift 2 ;;
        --venv) VENV=$2; shift 2 ;;
        --reuse-venv) REUSE=1; shift ;;
        --artifacts) ARTIFACTS=$2; shift 2 ;;
        --serve-timeout) SERVE_TIMEOUT=$2; shift 2 ;;
        --train-timeout) TRAIN_TIMEOUT=$2; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
    esac
done

mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
VENV=${VENV:-$WORK/venv}
ARTIFACTS=${ARTIFACTS:-$WORK/artifacts}
SPACE=$WORK/space
LOG=$WORK/rehearsal.log
APP_LOG=$WORK/app.log
JOURNEY_JSON=$ARTIFACTS/journey.json
mkdir -p "$ARTIFACTS"
: >"$LOG"
exec > >(tee -a "$LOG") 2>&1

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
say() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*"; }

APP_PID=""
PEAK_RSS="n/a"
stop_app() {
    if [[ -n $APP_PID ]] && kill -0 "$APP_PID" 2>/dev/null; then
        kill "$APP_PID" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$APP_PID" 2>/dev/null || break; sleep 0.2; done
        kill -9 "$APP_PID" 2>/dev/null || true
        wait "$APP_PID" 2>/dev/null || true
    fi
    APP_PID=""
}
trap stop_app EXIT
trap 'exit 130' INT TERM

app_tail() {
    echo "----- last 60 lines of $APP_LOG -----"
    tail -n 60 "$APP_LOG" || true
    echo "-------------------------------------"
}

say "IKD Studio Space rehearsal; work folder $WORK; log $LOG"
say "host: $(nproc) CPUs visible, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo) RAM," \
    "load $(cut -d' ' -f1-3 /proc/loadavg)"

# ---------------------------------------------------------------------------------------------- 1. files
COMMIT=$(git -C "$REPO" rev-parse --verify "$REF^{commit}")
rm -rf "$SPACE"
mkdir -p "$SPACE"
git -C "$REPO" archive "$COMMIT" | tar -x -C "$SPACE"
say "built $SPACE from $REF = $COMMIT: $(find "$SPACE" -type f | wc -l) files," \
    "$(du -sh "$SPACE" | cut -f1)"
[[ -f $SPACE/requirements.txt && -f $SPACE/app.py ]] || { echo "requirements.txt or app.py missing in $REF" >&2; exit 1; }
grep -q '^app_file: app.py' "$SPACE/README.md" || say "WARNING: README front matter has no 'app_file: app.py'"
if ! git -C "$REPO" diff --quiet "$COMMIT" -- . 2>/dev/null; then
    say "note: the working tree differs from $REF; those changes are NOT part of this rehearsal"
fi

# ---------------------------------------------------------------------------------------------- 2. install
CACHE_DIR=$("$DEV_PYTHON" -m pip cache dir 2>/dev/null || echo "$HOME/.cache/pip")
cache_mb() { if [[ -d $CACHE_DIR ]]; then du -sm "$CACHE_DIR" | cut -f1; else echo 0; fi; }
CACHE_BEFORE=$(cache_mb)
INSTALL_S="not measured (--reuse-venv)"
CACHE_STATE="n/a"
if ((REUSE)) && [[ -x $VENV/bin/python ]]; then
    say "reusing venv $VENV (install not timed)"
else
    rm -rf "$VENV"
    # a venv with a relative interpreter path breaks when moved; keep it absolute
    python3 -m venv "$VENV"
    if ((CACHE_BEFORE > 50)); then CACHE_STATE="warm (${CACHE_BEFORE} MB in $CACHE_DIR)"
    else CACHE_STATE="cold (${CACHE_BEFORE} MB in $CACHE_DIR)"; fi
    say "pip install -r requirements.txt into fresh $VENV; pip cache $CACHE_STATE"
    t0=$(now)
    (cd "$SPACE" && "$VENV/bin/pip" install --progress-bar off -r requirements.txt) >"$WORK/pip.log" 2>&1 || {
        tail -n 40 "$WORK/pip.log"; echo "pip install failed" >&2; exit 1; }
    INSTALL_S=$(elapsed "$t0" "$(now)")
    say "installed in ${INSTALL_S} s (pip log $WORK/pip.log); pip cache now $(cache_mb) MB"
fi
VERSIONS=$("$VENV/bin/python" - <<'EOF'
from importlib.metadata import version
print(", ".join(f"{p} {version(p)}" for p in ("torch", "torchvision", "timm", "gradio", "numpy")))
EOF
)
say "venv: $("$VENV/bin/python" -V 2>&1); $VERSIONS; $(du -sh "$VENV" | cut -f1)"

# ---------------------------------------------------------------------------------------------- 3. serve
PORT=$("$DEV_PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
URL="http://127.0.0.1:$PORT/"
PIN=()
if command -v taskset >/dev/null && taskset -c 0,1 true 2>/dev/null; then PIN=(taskset -c "0,1"); fi
rm -rf "$WORK/data" "$WORK/runs"
say "starting python app.py on $URL (SPACE_ID=rehearsal/ikd-studio, 2 threads, ${PIN[*]:-no taskset})"
t_start=$(now)
(
    cd "$SPACE"
    exec env SPACE_ID=rehearsal/ikd-studio SYSTEM=spaces OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 \
        GRADIO_ANALYTICS_ENABLED=False HF_HUB_OFFLINE=1 GRADIO_SERVER_NAME=127.0.0.1 GRADIO_SERVER_PORT="$PORT" \
        IKD_DATA_DIR="$WORK/data" IKD_WORK_DIR="$WORK/runs" PYTHONUNBUFFERED=1 \
        "${PIN[@]}" "$VENV/bin/python" app.py
) >"$APP_LOG" 2>&1 &
APP_PID=$!
SERVE_S=""
deadline=$(awk -v a="$t_start" -v t="$SERVE_TIMEOUT" 'BEGIN { printf "%d", a + t }')
while :; do
    if ! kill -0 "$APP_PID" 2>/dev/null; then
        say "the app exited before serving"; app_tail; exit 1
    fi
    code=$(curl -s -o /dev/null -m 2 -w '%{http_code}' "$URL" || true)
    if [[ $code == 200 ]]; then SERVE_S=$(elapsed "$t_start" "$(now)"); break; fi
    if (($(date +%s) > deadline)); then
        say "no 200 from $URL within ${SERVE_TIMEOUT} s (last code $code)"; app_tail; exit 1
    fi
    sleep 0.2
done
say "serving after ${SERVE_S} s (pid $APP_PID, RSS $(awk '/VmRSS/ {printf "%.0f MB", $2/1024}' "/proc/$APP_PID/status"))"

# ---------------------------------------------------------------------------------------------- 4. journey
JOURNEY_RC=0
"$DEV_PYTHON" "$SCRIPT_DIR/space_journey.py" "$URL" --artifacts "$ARTIFACTS" --json "$JOURNEY_JSON" \
    --data "$WORK/data" --train-timeout "$TRAIN_TIMEOUT" || JOURNEY_RC=$?
if [[ -r /proc/$APP_PID/status ]]; then
    PEAK_RSS=$(awk '/VmHWM/ {printf "%.0f MB", $2/1024}' "/proc/$APP_PID/status")
fi
if ((JOURNEY_RC)); then say "journey FAILED (rc $JOURNEY_RC)"; app_tail; fi
SPACES_MSG="\`spaces\` package is required to run hot-reloading"
if grep -q "$SPACES_MSG" "$APP_LOG"; then
    say "note: Gradio's Spaces hot-reload thread wants the \`spaces\` package (SYSTEM=spaces); the Space image" \
        "provides it, requirements.txt does not: harmless here"
fi
TRACEBACKS=$(grep -c 'Traceback' "$APP_LOG" || true)
KNOWN=$(grep -c "$SPACES_MSG" "$APP_LOG" || true)
if ((TRACEBACKS > KNOWN)); then say "note: the app log has $((TRACEBACKS - KNOWN)) other traceback(s): see $APP_LOG"; fi
stop_app

# ---------------------------------------------------------------------------------------------- 5. summary
SUMMARY_ARGS=(--commit "$COMMIT" --install "$INSTALL_S" --cache "$CACHE_STATE" --serve "$SERVE_S"
              --rss "$PEAK_RSS" --versions "$VERSIONS" --journey "$JOURNEY_JSON")
echo
echo "===== Space rehearsal summary ($(date -u +%Y-%m-%dT%H:%MZ); 2 CPU threads on a shared $(nproc)-core host:" \
     "timings are noisy) ====="
"$DEV_PYTHON" "$SCRIPT_DIR/space_journey.py" --summary "${SUMMARY_ARGS[@]}"
echo
echo "Command: scripts/space_rehearsal.sh${ORIG_ARGS:+ $ORIG_ARGS}   (log: $LOG, screenshots: $ARTIFACTS)"
exit "$JOURNEY_RC"

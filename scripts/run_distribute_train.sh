#!/usr/bin/env bash
# Data-parallel training.
# Usage: bash scripts/run_distribute_train.sh CFG DATA OUT WORKERS [RANK_TABLE_FILE] [train.py args]
#
# Without a rank table: one msrun job with WORKERS processes on this machine (Ascend, GPU or CPU).
# With RANK_TABLE_FILE (Ascend, legacy launch): one process per device with DEVICE_ID/RANK_ID/RANK_SIZE,
# device ids starting at DEVICE_START (default 0).
# DEVICE_TARGET (Ascend|GPU|CPU) overrides the config's device_target; MASTER_PORT picks msrun's port.
# Logs: OUT/msrun_log/worker_<rank>.log (msrun) or OUT/rank_<rank>.log (rank table); the training log
# itself is OUT/fold_F/training_log.txt (written by rank 0): it states the world size and, at the end,
# whether all ranks hold identical weights.
# The arguments are checked before anything starts (CFG a file, DATA a preprocessed folder with plans.json,
# WORKERS a positive integer, RANK_TABLE_FILE a file): one "error:" line and exit status 2.
set -euo pipefail
if [ $# -lt 4 ]; then
  echo "usage: bash $0 CFG DATA OUT WORKERS [RANK_TABLE_FILE] [train.py args]" >&2
  exit 2
fi
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CFG=$1; DATA=$2; OUT=$3; WORKERS=$4
shift 4
fail() { echo "error: $*" >&2; exit 2; }
# checked here, before msrun starts WORKERS processes that would each fail with a traceback
[ -f "$CFG" ] || fail "config file not found: $CFG"
[ -d "$DATA" ] || fail "preprocessed data folder not found: $DATA"
[ -f "$DATA/plans.json" ] || fail "$DATA is not a preprocessed folder (no plans.json); run prepare.py preprocess first"
[ ! -e "$OUT" ] || [ -d "$OUT" ] || fail "output folder $OUT is a file"
case "$WORKERS" in ''|*[!0-9]*) fail "WORKERS must be a positive integer, got '$WORKERS'" ;; esac
[ "$((10#$WORKERS))" -ge 1 ] || fail "WORKERS must be a positive integer, got '$WORKERS'"
WORKERS=$((10#$WORKERS))
RANK_TABLE=""
if [ $# -gt 0 ] && [ "${1#--}" = "$1" ]; then
  [ -f "$1" ] || fail "rank table file not found: $1"
  RANK_TABLE=$(realpath "$1")
  shift
fi

VENV_BIN="$ROOT/.venv/bin"
# msrun starts its workers with the first python on PATH: make it the project's venv
[ -d "$VENV_BIN" ] && export PATH="$VENV_BIN:$PATH"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
# graph compiles of a 3D U-Net can take minutes before the first collective
export HCCL_CONNECT_TIMEOUT=${HCCL_CONNECT_TIMEOUT:-1200}

ARGS=(--config "$CFG" --data "$DATA" --output "$OUT")
[ -n "${DEVICE_TARGET:-}" ] && ARGS+=(--device_target "$DEVICE_TARGET")
case " $* " in *" --fold "*|*" --fold="*) ;; *) ARGS+=(--fold 0) ;; esac
mkdir -p "$OUT"

if [ -z "$RANK_TABLE" ]; then
  command -v msrun > /dev/null || fail "msrun not found on PATH (it comes with MindSpore; is $VENV_BIN set up?)"
  PORT=${MASTER_PORT:-8118}
  echo "msrun: $WORKERS workers, master port $PORT, logs in $OUT/msrun_log"
  msrun --worker_num="$WORKERS" --local_worker_num="$WORKERS" --master_port="$PORT" \
    --log_dir="$OUT/msrun_log" --join=True "$ROOT/train.py" "${ARGS[@]}" "$@"
  exit $?
fi

export RANK_TABLE_FILE="$RANK_TABLE" RANK_SIZE="$WORKERS"
START=${DEVICE_START:-0}
PIDS=()
for ((rank = 0; rank < WORKERS; rank++)); do
  DEVICE_ID=$((START + rank)) RANK_ID=$rank python "$ROOT/train.py" "${ARGS[@]}" "$@" \
    > "$OUT/rank_$rank.log" 2>&1 &
  PIDS+=($!)
  echo "rank $rank: device $((START + rank)), pid $!, log $OUT/rank_$rank.log"
done
STATUS=0
for pid in "${PIDS[@]}"; do
  wait "$pid" || STATUS=1
done
[ $STATUS -eq 0 ] || echo "error: at least one rank failed; see $OUT/rank_*.log" >&2
exit $STATUS

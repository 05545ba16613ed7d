#!/usr/bin/env bash
# Sharded evaluation or prediction on one machine: the cases shared out among WORKERS processes.
# Usage: bash scripts/run_distribute_eval.sh WORKERS eval.py|predict.py <its arguments>
#
# Runs the script under msrun with WORKERS workers (no communication group: each worker reads its rank and
# the world size from msrun's environment and takes case i of the sorted case ids when i % WORKERS is its
# rank), then, once every worker has exited cleanly, the same command once more with --merge_shards: it
# writes what a single process writes at the end (eval.py: metrics.csv, eval_info.json, summary.json and,
# with postprocess auto and no stored decision, the postprocessing decision made on all the cases;
# predict.py: the run's summary and every rank's failed cases, exit status 2 if any failed). The merged
# outputs equal a single-process run's. eval.py's scoring (eval.py score, or --pred) is not sharded.
# DEVICE_TARGET (Ascend|GPU|CPU) overrides the config's device_target; MASTER_PORT picks msrun's port.
# Logs: <--output>/msrun_log/worker_<rank>.log. The arguments this script needs (WORKERS, the script,
# --output) are checked before msrun starts: one "error:" line and exit status 2.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: bash $0 WORKERS eval.py|predict.py <its arguments>" >&2
  exit 2
fi
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
WORKERS=$1; SCRIPT_NAME=$(basename "$2")
shift 2
fail() { echo "error: $*" >&2; exit 2; }
case "$WORKERS" in ''|*[!0-9]*) fail "WORKERS must be a positive integer, got '$WORKERS'" ;; esac
[ "$((10#$WORKERS))" -ge 1 ] || fail "WORKERS must be a positive integer, got '$WORKERS'"
WORKERS=$((10#$WORKERS))
case "$SCRIPT_NAME" in
  eval.py|predict.py) ;;
  *) fail "the script to shard must be eval.py or predict.py, got '$SCRIPT_NAME'" ;;
esac
if [ "$SCRIPT_NAME" = eval.py ] && [ "${1:-}" = score ]; then
  fail "eval.py score runs as one process; shard model evaluation (eval.py model, or --ckpt/--mindir)"
fi
OUTPUT=""
PREVIOUS=""
for arg in "$@"; do
  case "$arg" in
    --output=*) OUTPUT=${arg#--output=} ;;
    --pred|--pred=*) [ "$SCRIPT_NAME" = eval.py ] && fail "eval.py --pred (scoring mode) runs as one process; shard model evaluation (--ckpt/--mindir)" ;;
    --merge_shards) fail "--merge_shards is this script's last step; leave it out" ;;
  esac
  [ "$PREVIOUS" = "--output" ] && OUTPUT=$arg
  PREVIOUS=$arg
done
[ -n "$OUTPUT" ] || fail "$SCRIPT_NAME needs --output (the workers' logs and shares go there)"
[ ! -e "$OUTPUT" ] || [ -d "$OUTPUT" ] || fail "--output $OUTPUT is a file"

VENV_BIN="$ROOT/.venv/bin"
# msrun starts its workers with the first python on PATH: make it the project's venv
[ -d "$VENV_BIN" ] && export PATH="$VENV_BIN:$PATH"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
command -v msrun > /dev/null || fail "msrun not found on PATH (it comes with MindSpore; is $VENV_BIN set up?)"

ARGS=("$@")
[ -n "${DEVICE_TARGET:-}" ] && ARGS+=(--device_target "$DEVICE_TARGET")
# the workers and the merge share this id: the merge accepts only the shares of this run
export SHARDED_RUN_ID="$(date +%s%N)-$$"
mkdir -p "$OUTPUT"
PORT=${MASTER_PORT:-8128}
echo "msrun: $WORKERS workers of $SCRIPT_NAME, master port $PORT, logs in $OUTPUT/msrun_log"
if ! msrun --worker_num="$WORKERS" --local_worker_num="$WORKERS" --master_port="$PORT" \
    --log_dir="$OUTPUT/msrun_log" --join=True "$ROOT/$SCRIPT_NAME" "${ARGS[@]}"; then
  echo "error: a worker of $SCRIPT_NAME failed (see $OUTPUT/msrun_log/worker_*.log); nothing was merged" >&2
  exit 1
fi
python "$ROOT/$SCRIPT_NAME" "${ARGS[@]}" --merge_shards

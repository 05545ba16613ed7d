#!/usr/bin/env bash
# Data-parallel training, on one machine or on a cluster of NNODES machines.
# Usage: [NNODES=N NODE_RANK=r MASTER_ADDR=host MASTER_PORT=p] \
#        bash scripts/run_distribute_train.sh CFG DATA OUT WORKERS [RANK_TABLE_FILE] [train.py args]
#
# Without a rank table: one msrun job with WORKERS processes on this machine (Ascend, GPU or CPU).
# On a cluster, run the same command on every node with its NODE_RANK (0..NNODES-1): WORKERS are the
# workers of that node, the world size is NNODES * WORKERS, node 0 (MASTER_ADDR, an address of node 0 every
# node can reach) hosts msrun's scheduler, and rank 0 (on node 0) writes OUT/fold_F. Default NNODES=1.
# With RANK_TABLE_FILE (Ascend, legacy launch): one process per device with DEVICE_ID/RANK_ID/RANK_SIZE,
# device ids starting at DEVICE_START (default 0); on a cluster the rank table lists every node's devices
# and this node's ranks are NODE_RANK * WORKERS onwards.
# DEVICE_TARGET (Ascend|GPU|CPU) overrides the config's device_target; MASTER_PORT picks msrun's port.
# Logs: OUT/msrun_log/worker_<rank>.log (msrun) or OUT/rank_<rank>.log (rank table); the training log
# itself is OUT/fold_F/training_log.txt (written by rank 0): it states the world size and, at the end,
# whether all ranks hold identical weights.
# The arguments are checked before anything starts (CFG a file, DATA a preprocessed folder with plans.json,
# WORKERS a positive integer, RANK_TABLE_FILE a file, NNODES a positive integer, 0 <= NODE_RANK < NNODES,
# MASTER_ADDR set when NNODES > 1 without a rank table): one "error:" line and exit status 2.
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
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
case "$NNODES" in ''|*[!0-9]*) fail "NNODES must be a positive integer, got '$NNODES'" ;; esac
[ "$((10#$NNODES))" -ge 1 ] || fail "NNODES must be a positive integer, got '$NNODES'"
NNODES=$((10#$NNODES))
case "$NODE_RANK" in ''|*[!0-9]*) fail "NODE_RANK must be an integer from 0 to NNODES-1, got '$NODE_RANK'" ;; esac
NODE_RANK=$((10#$NODE_RANK))
[ "$NODE_RANK" -lt "$NNODES" ] || fail "NODE_RANK must be an integer from 0 to NNODES-1 ($((NNODES - 1))), got $NODE_RANK"
WORLD=$((NNODES * WORKERS))
# read by train.py: msrun also starts a scheduler on a node r > 0 that shares node 0's host, which must step aside
export NODE_RANK
RANK_TABLE=""
if [ $# -gt 0 ] && [ "${1#--}" = "$1" ]; then
  [ -f "$1" ] || fail "rank table file not found: $1"
  RANK_TABLE=$(realpath "$1")
  shift
fi
# msrun's workers find each other through node 0; a rank table lists every server's devices instead
if [ "$NNODES" -gt 1 ] && [ -z "$RANK_TABLE" ] && [ -z "${MASTER_ADDR:-}" ]; then
  fail "NNODES=$NNODES needs MASTER_ADDR, the address of node 0 (NODE_RANK=0) that every node can reach"
fi

VENV_BIN="$ROOT/.venv/bin"
# msrun starts its workers with the first python on PATH: make it the project's venv
[ -d "$VENV_BIN" ] && export PATH="$VENV_BIN:$PATH"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
# graph compiles of a 3D U-Net can take minutes before the first collective
export HCCL_CONNECT_TIMEOUT=${HCCL_CONNECT_TIMEOUT:-1200}
# the workers of this node share its memory (micro_batch_size: auto divides it among them)
export KITSEG_LOCAL_WORKERS="$WORKERS"

ARGS=(--config "$CFG" --data "$DATA" --output "$OUT")
[ -n "${DEVICE_TARGET:-}" ] && ARGS+=(--device_target "$DEVICE_TARGET")
case " $* " in *" --fold "*|*" --fold="*) ;; *) ARGS+=(--fold 0) ;; esac
mkdir -p "$OUT"

if [ -z "$RANK_TABLE" ]; then
  command -v msrun > /dev/null || fail "msrun not found on PATH (it comes with MindSpore; is $VENV_BIN set up?)"
  PORT=${MASTER_PORT:-8118}
  CLUSTER=()
  if [ "$NNODES" -gt 1 ]; then
    CLUSTER=(--node_rank="$NODE_RANK" --master_addr="$MASTER_ADDR")
    echo "msrun: node $NODE_RANK of $NNODES, $WORKERS of $WORLD workers, master $MASTER_ADDR:$PORT, logs in $OUT/msrun_log"
  else
    echo "msrun: $WORKERS workers, master port $PORT, logs in $OUT/msrun_log"
  fi
  msrun --worker_num="$WORLD" --local_worker_num="$WORKERS" "${CLUSTER[@]}" --master_port="$PORT" \
    --log_dir="$OUT/msrun_log" --join=True "$ROOT/train.py" "${ARGS[@]}" "$@"
  exit $?
fi

export RANK_TABLE_FILE="$RANK_TABLE" RANK_SIZE="$WORLD"
START=${DEVICE_START:-0}
PIDS=()
for ((local_rank = 0; local_rank < WORKERS; local_rank++)); do
  rank=$((NODE_RANK * WORKERS + local_rank))
  DEVICE_ID=$((START + local_rank)) RANK_ID=$rank python "$ROOT/train.py" "${ARGS[@]}" "$@" \
    > "$OUT/rank_$rank.log" 2>&1 &
  PIDS+=($!)
  echo "rank $rank: device $((START + local_rank)), pid $!, log $OUT/rank_$rank.log"
done
STATUS=0
for pid in "${PIDS[@]}"; do
  wait "$pid" || STATUS=1
done
[ $STATUS -eq 0 ] || echo "error: at least one rank failed; see $OUT/rank_*.log" >&2
exit $STATUS

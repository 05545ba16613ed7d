#!/bin/bash
# Ascend 310 flow end to end: windows -> inference -> stitching and scoring.
# Usage: bash ascend310_infer/run_infer_310.sh MINDIR CFG PRE FOLD WORK [DEVICE_ID]
set -euo pipefail
if [ $# -lt 5 ]; then
  echo "usage: bash $0 MINDIR CFG PRE FOLD WORK [DEVICE_ID]" >&2
  exit 2
fi
MINDIR=$1 CFG=$2 PRE=$3 FOLD=$4 WORK=$5 DEVICE_ID=${6:-0}
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(dirname "$HERE")"
PYTHON=${PYTHON:-python3}

"$PYTHON" "$ROOT/preprocess.py" --config "$CFG" --data "$PRE" --fold "$FOLD" --output_path "$WORK/bins"
if [ -x "$HERE/out/main" ]; then
  "$HERE/out/main" --mindir_path="$MINDIR" --input_path="$WORK/bins/00_data" --output_path="$WORK/results" \
    --device_id="$DEVICE_ID"
else
  echo "note: $HERE/out/main not built; running the MindIR with MindSpore's Python API instead" >&2
  "$PYTHON" "$HERE/mindir_runner.py" --mindir "$MINDIR" --input "$WORK/bins/00_data" --output "$WORK/results"
fi
"$PYTHON" "$ROOT/postprocess.py" --config "$CFG" --data "$PRE" --fold "$FOLD" --pre_path "$WORK/bins" \
  --result_path "$WORK/results" --output "$WORK/eval"

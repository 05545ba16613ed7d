#!/bin/bash
# Dice of predict.py --locate off|windows|crop on a finished demo's held-out fold-0 cases and its test set.
# Usage: bash benchmarks/locate_dice.sh DEMO_DIR   (a `make demo` / scripts/run_demo.sh output folder whose
# model carries a first pass, e.g. bash scripts/run_demo.sh DEMO_DIR --locator_iters 300)
# SHIFTS="4 9" also scores off and crop on copies of the held-out cases moved by that many voxels in-plane
# (benchmarks/shifted_cases.py): how much the Dice moves with the window layout alone.
set -euo pipefail
D=${1:?usage: bash benchmarks/locate_dice.sh DEMO_DIR}
PY=${PYTHON:-.venv/bin/python}
M=$D/demo_unet.mindir

# score MODE SET INPUT: predict INPUT with --locate MODE into locate_MODE/SET, score it, print one line
score() {
  local mode=$1 set=$2 in=$3 out=$D/locate_$1/$2 err=$D/locate_$1_$2.err windows
  $PY predict.py --config config/demo.yaml --mindir "$M" --input "$in" --output "$out" --locate "$mode" \
    --overwrite 2> "$err" > /dev/null || { tail -3 "$err"; exit 1; }
  # no such line with --locate off, or when every case was already predicted
  windows=$({ grep -o "locate: [0-9]* of [0-9]* windows run" "$err" || true; } \
    | awk '{r += $2; t += $4} END {if (t) print r " of " t}')
  if [ -z "$windows" ] && [ "$mode" != off ]; then windows="not logged (cases already predicted)"; fi
  $PY eval.py score --pred "$out" --ref "$in" --metric kits19 --output "$D/locate_$mode/${set}_metrics.csv" > /dev/null
  $PY -c "import json, sys; s = json.load(open(sys.argv[1])); print(sys.argv[2], 'kidney %.4f tumour %.4f' % (s['kits19_kidney_dice'], s['kits19_tumor_dice']), 'windows run', sys.argv[3] or 'all')" \
    "$D/locate_$mode/${set}_metrics_summary.json" "$mode $set" "$windows"
}

mkdir -p "$D/heldout_raw"
for c in $($PY -c "import json, sys; print(' '.join(json.load(open(sys.argv[1]))[0]['val']))" "$D/preprocessed/splits.json"); do
  ln -sfn "$D/raw/$c" "$D/heldout_raw/$c"
done
for mode in off windows crop; do
  score "$mode" heldout "$D/heldout_raw"
  score "$mode" test "$D/test/raw"
done
for k in ${SHIFTS:-}; do
  $PY -m benchmarks.shifted_cases --input "$D/heldout_raw" --output "$D/heldout_shift$k" --voxels "$k" > /dev/null
  for mode in off crop; do
    score "$mode" "heldout_shift$k" "$D/heldout_shift$k"
  done
done

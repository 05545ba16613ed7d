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
mkdir -p "$D/heldout_raw"
for c in $($PY -c "import json, sys; print(' '.join(json.load(open(sys.argv[1]))[0]['val']))" "$D/preprocessed/splits.json"); do
  ln -sfn "$D/raw/$c" "$D/heldout_raw/$c"
done
for mode in off windows crop; do
  for set in heldout test; do
    if [ "$set" = heldout ]; then IN=$D/heldout_raw; else IN=$D/test/raw; fi
    OUT=$D/locate_$mode/$set
    $PY predict.py --config config/demo.yaml --mindir "$M" --input "$IN" --output "$OUT" --locate "$mode" \
      --overwrite 2> "$D/locate_${mode}_${set}.err" > /dev/null || { tail -3 "$D/locate_${mode}_${set}.err"; exit 1; }
    # no such line with --locate off, or when every case was already predicted
    windows=$({ grep -o "locate: [0-9]* of [0-9]* windows run" "$D/locate_${mode}_${set}.err" || true; } \
      | awk '{r += $2; t += $4} END {if (t) print r " of " t}')
    if [ -z "$windows" ] && [ "$mode" != off ]; then windows="not logged (cases already predicted)"; fi
    $PY eval.py score --pred "$OUT" --ref "$IN" --metric kits19 --output "$D/locate_$mode/${set}_metrics.csv" > /dev/null
    $PY -c "import json, sys; s = json.load(open(sys.argv[1])); print(sys.argv[2], 'kidney %.4f tumour %.4f' % (s['kits19_kidney_dice'], s['kits19_tumor_dice']), 'windows run', sys.argv[3] or 'all')" \
      "$D/locate_$mode/${set}_metrics_summary.json" "$mode $set" "$windows"
  done
done
for k in ${SHIFTS:-}; do
  IN=$D/heldout_shift$k
  $PY -m benchmarks.shifted_cases --input "$D/heldout_raw" --output "$IN" --voxels "$k" > /dev/null
  for mode in off crop; do
    OUT=$D/locate_$mode/heldout_shift$k
    $PY predict.py --config config/demo.yaml --mindir "$M" --input "$IN" --output "$OUT" --locate "$mode" \
      --overwrite 2> "$D/locate_${mode}_shift$k.err" > /dev/null || { tail -3 "$D/locate_${mode}_shift$k.err"; exit 1; }
    $PY eval.py score --pred "$OUT" --ref "$IN" --metric kits19 --output "$D/locate_$mode/heldout_shift${k}_metrics.csv" > /dev/null
    $PY -c "import json, sys; s = json.load(open(sys.argv[1])); print(sys.argv[2], 'kidney %.4f tumour %.4f' % (s['kits19_kidney_dice'], s['kits19_tumor_dice']))" \
      "$D/locate_$mode/heldout_shift${k}_metrics_summary.json" "$mode heldout shifted by $k"
  done
done

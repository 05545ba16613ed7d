#!/usr/bin/env bash
# The whole pipeline on synthetic KiTS19-format data, on CPU: synth -> preprocess -> train fold 0 ->
# evaluate the held-out fold -> export MindIR -> predict one raw case with the MindIR -> score the MindIR on
# an independent synthetic test set (another seed, never seen in training or model selection) -> report folder.
# Usage: bash scripts/run_demo.sh [OUT_DIR] [extra train.py args]
# Environment: DEMO_CASES (20), DEMO_TEST_CASES (10), DEMO_SEED (0; the test set uses DEMO_SEED + 1).
# Training is a budget of minutes (config/demo.yaml: train_minutes): its first epoch is timed and the
# epochs that fit are chosen, logged in train/fold_0/training_log.txt and printed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-demo_output}
shift || true
PY=${PYTHON:-.venv/bin/python}
CFG=config/demo.yaml
CASES=${DEMO_CASES:-20}
TEST_CASES=${DEMO_TEST_CASES:-10}
SEED=${DEMO_SEED:-0}
TEST_SEED=$(( SEED + 1 ))
export DEVICE_TARGET=CPU

start=$(date +%s)
step() { printf '\n== %s  [%d s into the demo]\n' "$*" $(( $(date +%s) - start )); }
rm -rf "$OUT.partial"
mkdir -p "$OUT.partial"
W="$OUT.partial"

step "1/7 synthetic KiTS19-format data ($CASES cases, seed $SEED)"
$PY prepare.py synth --format kits19 --cases "$CASES" --out "$W/raw" --seed "$SEED"
step "2/7 fingerprint, plan, preprocess"
$PY prepare.py preprocess --raw "$W/raw" --out "$W/preprocessed" --config $CFG
step "3/7 train fold 0"
$PY train.py --config $CFG --data "$W/preprocessed" --fold 0 --output "$W/train" "$@"
step "4/7 evaluate the held-out fold"
$PY eval.py --config $CFG --ckpt "$W/train/fold_0/checkpoint_best.ckpt" --data "$W/preprocessed" --fold 0 --output "$W/eval"
step "5/7 export MindIR"
$PY export.py --config $CFG --ckpt "$W/train/fold_0/checkpoint_best.ckpt" --file_name "$W/demo_unet" --file_format MINDIR
step "6/7 predict one held-out raw case with the MindIR"
case_id=$($PY -c "import json, sys; print(json.load(open(sys.argv[1]))[0]['val'][0])" "$W/preprocessed/splits.json")
$PY predict.py --config $CFG --mindir "$W/demo_unet.mindir" --input "$W/raw/$case_id/imaging.nii.gz" --output "$W/predict"
step "7/7 score the MindIR on an independent synthetic test set ($TEST_CASES cases, seed $TEST_SEED)"
$PY prepare.py synth --format kits19 --cases "$TEST_CASES" --out "$W/test/raw" --seed "$TEST_SEED"
$PY predict.py --config $CFG --mindir "$W/demo_unet.mindir" --input "$W/test/raw" --output "$W/test/predictions"
$PY eval.py --pred "$W/test/predictions" --ref "$W/test/raw" --metric kits19 --out "$W/test/metrics.csv"
$PY -m scripts.make_report --work "$W" --report "$W/report" --seconds $(( $(date +%s) - start ))

rm -rf "$OUT"
mv "$W" "$OUT"
# the epoch count the training budget chose (and a warning if the budget held less than one epoch)
sed -n 's/^[^ ]* [^ ]*  \(\(warning: \)\{0,1\}train_minutes .*\)$/training: \1/p' "$OUT/train/fold_0/training_log.txt"
echo "demo finished in $(( $(date +%s) - start )) s; report: $OUT/report/report.md"

#!/usr/bin/env bash
# One device. Usage: bash scripts/run_standalone_train.sh CFG DATA OUT [train.py args, e.g. --fold 1]
# DEVICE_TARGET (Ascend|GPU|CPU) overrides the config's device_target; DEVICE_ID picks the card.
# Without --fold, fold 0 is trained. The console output is appended to OUT/train_standalone.log (so a
# resumed or refused run keeps the sessions before it) as well as shown on the terminal.
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: bash $0 CFG DATA OUT [train.py args]" >&2
  exit 2
fi
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CFG=$1; DATA=$2; OUT=$3
shift 3
fail() { echo "error: $*" >&2; exit 2; }
[ -f "$CFG" ] || fail "config file not found: $CFG"
[ -d "$DATA" ] || fail "preprocessed data folder not found: $DATA"
[ -f "$DATA/plans.json" ] || fail "$DATA is not a preprocessed folder (no plans.json); run prepare.py preprocess first"
[ ! -e "$OUT" ] || [ -d "$OUT" ] || fail "output folder $OUT is a file"
PY=${PYTHON:-$ROOT/.venv/bin/python}
[ -x "$PY" ] || PY=python
EXTRA=()
[ -n "${DEVICE_TARGET:-}" ] && EXTRA+=(--device_target "$DEVICE_TARGET")
case " $* " in *" --fold "*|*" --fold="*) ;; *) EXTRA+=(--fold 0) ;; esac
mkdir -p "$OUT"
"$PY" "$ROOT/train.py" --config "$CFG" --data "$DATA" --output "$OUT" "${EXTRA[@]}" "$@" 2>&1 \
  | tee -a "$OUT/train_standalone.log"
exit "${PIPESTATUS[0]}"

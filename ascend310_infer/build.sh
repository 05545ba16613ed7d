#!/bin/bash
# Builds ascend310_infer/out/main against the installed MindSpore Ascend package.
# Usage: bash build.sh [MINDSPORE_PATH]   (default: the mindspore package of the python3 on PATH)
set -euo pipefail
cd "$(dirname "$0")"

MINDSPORE_PATH="${1:-$(python3 -c 'import os, mindspore; print(os.path.dirname(mindspore.__file__))' 2>/dev/null || true)}"
if [ -z "$MINDSPORE_PATH" ] || [ ! -d "$MINDSPORE_PATH/include/api" ]; then
  echo "error: no MindSpore C++ headers found (looked in '${MINDSPORE_PATH}/include/api');" \
       "install the Ascend MindSpore package or pass its folder as the first argument" >&2
  exit 2
fi

rm -rf out
mkdir out
cd out
cmake .. -DMINDSPORE_PATH="$(realpath "$MINDSPORE_PATH")"
make -j"$(nproc)"
echo "built $(pwd)/main"

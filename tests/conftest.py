"""Shared test set-up: the repository root on sys.path and the CPU fast path applied before MindSpore."""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import src  # noqa: E402,F401  (sets the oneDNN ISA before any test imports mindspore)

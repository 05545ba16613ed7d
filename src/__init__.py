"""Kidney and kidney-tumour segmentation on CT with MindSpore (nnU-Net style, KiTS19/KiTS21)."""
# The CPU fast path has to pick oneDNN's ISA before MindSpore is first imported, and every
# entry point imports this package first, so this is the one place where that choice is made.
from src import cpu_env as _cpu_env

_cpu_env.apply_before_mindspore_import()

"""Environment choices that must be made before MindSpore is imported (no MindSpore import here).

oneDNN picks a slow reference Conv3d kernel on AVX-512 machines; capping its ISA at AVX2 makes it
choose a GEMM-based kernel that is ~20x faster (../shared/MINDSPORE_NOTES.md). Users switch the
fast path off with ``KITSEG_CPU_FAST_PATH=0``; an ISA the user already set is never overridden.
"""
import os

FAST_PATH_ENV = "KITSEG_CPU_FAST_PATH"


def fast_path_enabled() -> bool:
    return os.environ.get(FAST_PATH_ENV, "1").strip().lower() not in ("0", "false", "off", "no")


def apply_before_mindspore_import() -> None:
    if fast_path_enabled():
        os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")

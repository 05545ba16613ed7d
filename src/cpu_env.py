"""Environment choices that must be made before MindSpore is imported (no MindSpore import here).

oneDNN picks a slow reference Conv3d kernel on AVX-512 machines; capping its ISA at AVX2 makes it
choose a GEMM-based kernel that is ~20x faster (../shared/MINDSPORE_NOTES.md). Users switch the
fast path off with ``KITSEG_CPU_FAST_PATH=0``; an ISA the user already set is never overridden.

The compiled CPU kernels (``src/models/cpu_kernels``) are faster uncapped (oneDNN's AVX-512 kernels), but
MindSpore's own Conv3d is not. oneDNN reads the cap when it creates its first primitive, so a process may
still release the cap after import: ``release_cap`` does, for a network whose every convolution runs
through the compiled kernels (the trainer, and the predictor on checkpoints; never a MindIR or
``export.py``). ``KITSEG_CPU_ISA``: ``auto`` (default) that way, ``avx2`` never releases the cap,
``native`` never sets it (docs/PERFORMANCE.md, "Compiled CPU kernels").
"""
import os

FAST_PATH_ENV = "KITSEG_CPU_FAST_PATH"
ISA_ENV = "KITSEG_CPU_ISA"
ISA_CAP = "ONEDNN_MAX_CPU_ISA"
# marks the cap as ours (also in child processes, which inherit both), so that only ours is released
CAP_MARKER = "KITSEG_ISA_CAPPED_BY_FAST_PATH"


def switch_on(name: str) -> bool:
    """An on/off environment switch, on unless set to 0/false/off/no."""
    return os.environ.get(name, "1").strip().lower() not in ("0", "false", "off", "no")


def fast_path_enabled() -> bool:
    return switch_on(FAST_PATH_ENV)


def isa_mode() -> str:
    mode = os.environ.get(ISA_ENV, "auto").strip().lower()
    return mode if mode in ("auto", "avx2", "native") else "auto"


def apply_before_mindspore_import() -> None:
    if fast_path_enabled() and isa_mode() != "native" and ISA_CAP not in os.environ:
        os.environ[ISA_CAP] = "AVX2"
        os.environ[CAP_MARKER] = "1"


def isa_capped() -> bool:
    """True while oneDNN is held to AVX2 (by us or by the user)."""
    return os.environ.get(ISA_CAP, "").upper() == "AVX2"


def release_cap() -> bool:
    """Lift our AVX2 cap (not one the user set); True if oneDNN is uncapped afterwards. Only effective
    before the process's first oneDNN primitive."""
    if isa_mode() == "auto" and os.environ.get(CAP_MARKER) == "1":
        os.environ.pop(ISA_CAP, None)
        os.environ.pop(CAP_MARKER, None)
    return ISA_CAP not in os.environ

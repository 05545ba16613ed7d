"""bf16 convolutions on CPUs that have them (AVX512-BF16 or AMX), never on others (no MindSpore import here).

oneDNN runs float32 convolutions with bf16 inputs and float32 accumulation when its default floating-point
math mode is BF16 (``ONEDNN_DEFAULT_FPMATH_MODE=BF16``, read when its first primitive is created), and only
where the ISA has bf16 dot products; elsewhere it would emulate them slowly or ignore the hint. So the
predictor asks ``choose_precision`` before its network runs: ``inference_precision: auto`` (default) takes
bf16 exactly when /proc/cpuinfo lists ``avx512_bf16`` or ``amx_bf16``, ``bf16`` asks for it but still never
on a CPU without those flags, ``fp32`` never. Training never changes precision this way. It reaches the
compiled CPU kernels (src/models/cpu_kernels) only with oneDNN's AVX2 cap released (src/cpu_env.py), as the
checkpoint predictor does; a user's own ``ONEDNN_DEFAULT_FPMATH_MODE`` is left alone.
"""
import os
from typing import Iterable, Optional, Set

FPMATH_ENV = "ONEDNN_DEFAULT_FPMATH_MODE"
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
SHOWN_FLAGS = BF16_FLAGS + ("amx_tile", "avx512f", "avx2")


def cpu_flags(cpuinfo: Optional[str] = None) -> Set[str]:
    """The first processor's flags from /proc/cpuinfo (or the given text); empty when unreadable."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as handle:
                cpuinfo = handle.read()
        except OSError:
            return set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags") and ":" in line:
            return set(line.split(":", 1)[1].split())
    return set()


def relevant_flags(flags: Optional[Iterable[str]] = None) -> Set[str]:
    flags = cpu_flags() if flags is None else set(flags)
    return {flag for flag in SHOWN_FLAGS if flag in flags}


def bf16_capable(flags: Optional[Iterable[str]] = None) -> bool:
    flags = cpu_flags() if flags is None else set(flags)
    return any(flag in flags for flag in BF16_FLAGS)


def choose_precision(setting: str, flags: Optional[Iterable[str]] = None) -> str:
    """"bf16" or "fp32" for the config's ``inference_precision`` on a CPU with ``flags`` (default: this one)."""
    if setting not in ("auto", "bf16", "fp32"):
        raise ValueError(f"inference_precision must be auto, bf16 or fp32, got {setting!r}")
    return "bf16" if setting != "fp32" and bf16_capable(flags) else "fp32"


def apply_precision(setting: str, flags: Optional[Iterable[str]] = None) -> str:
    """Set oneDNN's math mode for ``choose_precision``'s answer (before the first primitive); returns it.
    A math mode the user set is kept and reported as is."""
    if FPMATH_ENV in os.environ and os.environ.get("KITSEG_FPMATH_SET") != "1":
        return "bf16" if os.environ[FPMATH_ENV].upper() == "BF16" else "fp32"
    chosen = choose_precision(setting, flags)
    if chosen == "bf16":
        os.environ[FPMATH_ENV] = "BF16"
        os.environ["KITSEG_FPMATH_SET"] = "1"
    elif os.environ.get("KITSEG_FPMATH_SET") == "1":
        os.environ.pop(FPMATH_ENV, None)
        os.environ.pop("KITSEG_FPMATH_SET", None)
    return chosen

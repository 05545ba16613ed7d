"""The one place that chooses the device, the execution mode and the CPU fast path.

The part of the fast path that must precede ``import mindspore`` (oneDNN's ISA cap) lives in
``src/cpu_env.py``; everything that is set through MindSpore's API is set here. Measurements behind
each choice are in docs/PERFORMANCE.md.
"""
import os
import sys

from src import cpu_env
from src.config import DEVICE_TARGETS
from src.errors import UserError

MODES = ("graph", "pynative")
# O0 runs the kernels as they are; O1 adds graph-kernel fusion, which measured slower on CPU.
CPU_JIT_LEVEL = "O0"

_state = {"device": None, "mode": None}


def normalize_device_target(device_target: str) -> str:
    by_lower = {t.lower(): t for t in DEVICE_TARGETS}
    target = by_lower.get(str(device_target).strip().lower())
    if target is None:
        raise UserError(f"device_target must be one of {', '.join(DEVICE_TARGETS)}, got {device_target!r}")
    return target


def cpu_thread_count() -> int:
    """Cores this process may run on (cgroup/affinity aware), overridable by KITSEG_CPU_THREADS."""
    override = os.environ.get("KITSEG_CPU_THREADS")
    if override:
        try:
            value = int(override)
        except ValueError:
            raise UserError(f"KITSEG_CPU_THREADS must be a positive integer, got {override!r}") from None
        if value < 1:
            raise UserError(f"KITSEG_CPU_THREADS must be a positive integer, got {override!r}")
        return value
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def device_available(target: str) -> bool:
    import mindspore as ms

    if target == "CPU":
        return True
    module = ms.device_context.gpu if target == "GPU" else ms.device_context.ascend
    try:
        return bool(module.is_available())
    except Exception:  # a missing driver/plugin raises from inside MindSpore
        return False


def _set_cpu_threads(ms, threads: int) -> None:
    from mindspore._c_expression import RuntimeConf

    # MindSpore refuses a second threads_num call in one process; the first choice stands.
    if not RuntimeConf.get_instance().is_op_threads_num_configured():
        ms.device_context.cpu.op_tuning.threads_num(threads)


def setup_device(device_target: str, mode: str = "graph", deterministic: bool = False) -> str:
    """Select the device (falling back to CPU when the requested accelerator is missing), the
    execution mode and, on CPU, the fast-path options. Returns the device actually used.

    Call once per process before building networks; later calls must ask for the same device.
    """
    import mindspore as ms
    from mindspore._c_expression import DeviceManagerConf

    target = normalize_device_target(device_target)
    if mode not in MODES:
        raise UserError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if not device_available(target):
        print(f"warning: device {target} is not available here; running on CPU", file=sys.stderr)
        target = "CPU"
    if _state["device"] not in (None, target):
        raise RuntimeError(f"the device is already set to {_state['device']}; cannot switch to {target}")

    device_id = os.environ.get("DEVICE_ID")
    # msrun negotiates device ids itself; a rank-table launch names it in DEVICE_ID
    if _state["device"] != target:
        try:
            ms.set_device(target, int(device_id) if device_id and target != "CPU" else None)
        except RuntimeError:
            # Once any kernel has run, MindSpore refuses set_device even for the device in use.
            if ms.get_context("device_target") != target:
                raise
    ms.set_context(mode=ms.GRAPH_MODE if mode == "graph" else ms.PYNATIVE_MODE)
    if deterministic and not DeviceManagerConf.get_instance().is_deterministic_configured():
        ms.set_deterministic(True)
    if target == "CPU":
        _set_cpu_threads(ms, cpu_thread_count())
        if mode == "graph":
            ms.set_context(jit_config={"jit_level": CPU_JIT_LEVEL})
    _state["device"] = target
    _state["mode"] = mode
    return target


def fast_path_active() -> bool:
    """True when this process runs on CPU with the fast path in force: the ISA cap applied before import,
    or released for the compiled CPU kernels (``cpu_env.release_cap``)."""
    released = cpu_env.isa_mode() != "avx2" and cpu_env.ISA_CAP not in os.environ
    return (_state["device"] in (None, "CPU") and cpu_env.fast_path_enabled()
            and (cpu_env.isa_capped() or released))

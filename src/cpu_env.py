"""Environment choices that must be made before MindSpore is imported (no MindSpore import here).

oneDNN picks a slow reference Conv3d kernel on AVX-512 machines; capping its ISA at AVX2 makes it
choose a GEMM-based kernel that is far faster (docs/PERFORMANCE.md, "Levers, one at a time"). Users switch the
fast path off with ``KITSEG_CPU_FAST_PATH=0``; an ISA the user already set is never overridden.

The compiled CPU kernels (``src/models/cpu_kernels``) are faster uncapped (oneDNN's AVX-512 kernels), but
MindSpore's own Conv3d is not. oneDNN reads the cap when it creates its first primitive, so a process may
still release the cap after import: ``release_cap`` does, for a network whose every convolution runs
through the compiled kernels (the trainer, and the predictor on checkpoints; never a MindIR or
``export.py``). ``KITSEG_CPU_ISA``: ``auto`` (default) that way, ``avx2`` never releases the cap,
``native`` never sets it (docs/PERFORMANCE.md, "Compiled CPU kernels").

It also says what this machine lets the process use, so nothing depends on the developer's machine:
``cap_workers`` holds every pool of worker processes (preprocessing, MindSpore's data loader, which
refuses more workers than CPUs) to the CPUs in the process's affinity mask, and ``memory_limit_bytes``
is the physical memory or the cgroup limit when that is lower (checked before large allocations);
``process_memory_budget`` is what a training process may still grow to (the micro-batch choice).
"""
import os
import sys

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


# ---------------------------------------------------------------- what the process may use

_CGROUP_MEMORY_LIMITS = ("/sys/fs/cgroup/memory.max",  # cgroup v2
                         "/sys/fs/cgroup/memory/memory.limit_in_bytes")  # cgroup v1
_REPORTED_CAPS: set = set()


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, which containers and taskset narrow)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no affinity API (macOS)
        return max(1, os.cpu_count() or 1)


def cap_workers(requested: int, what: str) -> int:
    """``requested`` worker processes (at least 1) held to :func:`usable_cpus`; one line on stderr the first
    time a request for ``what`` is capped (the data loader asks again every epoch)."""
    requested = max(1, int(requested))
    available = usable_cpus()
    if requested <= available:
        return requested
    if (what, requested, available) not in _REPORTED_CAPS:
        _REPORTED_CAPS.add((what, requested, available))
        print(f"note: {what}: {requested} workers capped at {available}, the CPUs this process may use",
              file=sys.stderr)
    return available


def _cgroup_memory_limit() -> int | None:
    for path in _CGROUP_MEMORY_LIMITS:
        try:
            with open(path) as handle:
                value = handle.read().strip()
        except OSError:
            continue
        if value.isdigit():  # "max" (v2) means no limit; v1 reports a huge number instead
            return int(value)
    return None


def memory_limit_bytes() -> int | None:
    """The memory this process may use at most: physical memory, or the cgroup limit when lower; None when
    neither can be read."""
    limits = []
    try:
        limits.append(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        pass
    cgroup = _cgroup_memory_limit()
    if cgroup is not None:
        limits.append(cgroup)
    return min(limits) if limits else None


def process_memory_budget(sharers: int = 1) -> int | None:
    """Bytes this process may grow to: what it holds now plus its share (1 / ``sharers``) of the machine's
    MemAvailable; under a cgroup memory limit below the physical memory, at most that limit minus what the
    rest of the cgroup holds (its usage without reclaimable file cache). None when /proc cannot be read."""
    try:
        available = _meminfo_bytes("/proc/meminfo", "MemAvailable")
        with open("/proc/self/statm") as handle:
            own = int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, KeyError, ValueError, IndexError):
        return None
    budget = available // max(int(sharers), 1) + own
    limit = _cgroup_memory_limit()
    if limit is not None and limit < os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"):
        others = max(_cgroup_usage() - own, 0)
        budget = min(budget, limit - others)
    return max(int(budget), 0)


def _meminfo_bytes(path: str, key: str) -> int:
    with open(path) as handle:
        fields = dict(line.split(":", 1) for line in handle if ":" in line)
    return int(fields[key].split()[0]) * 1024


def _cgroup_usage() -> int:
    """The cgroup's memory usage without its inactive file cache (v2, then v1); 0 when unreadable."""
    for usage_path, stat_path, cache_key in (
            ("/sys/fs/cgroup/memory.current", "/sys/fs/cgroup/memory.stat", "inactive_file"),
            ("/sys/fs/cgroup/memory/memory.usage_in_bytes", "/sys/fs/cgroup/memory/memory.stat", "total_inactive_file")):
        try:
            with open(usage_path) as handle:
                usage = int(handle.read().strip())
        except (OSError, ValueError):
            continue
        try:
            with open(stat_path) as handle:
                stats = dict(line.split() for line in handle if len(line.split()) == 2)
            usage -= int(stats.get(cache_key, 0))
        except (OSError, ValueError):
            pass
        return max(usage, 0)
    return 0

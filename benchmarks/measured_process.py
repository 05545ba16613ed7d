"""One child process run as a benchmark step, measured: wall time, its own peak resident set and its process
tree's peak memory, stopped when it runs away (memory or time).

The child runs in its own process group. ``os.wait4`` on it gives the kernel's peak resident set of that
child (``peak_rss_gb``: the largest of it and of each descendant it waited for, one process at a time;
``RUSAGE_CHILDREN`` would mix all steps). Every 0.5 s the child's resident set (``VmRSS``) plus its
descendants' private memory (``Private_*`` of ``smaps_rollup``: what they share with no one, since forked
copy-on-write pages are in the child's own figure; read every 3 s, being costly) give the process tree's
memory, whose maximum is ``peak_tree_gb`` (sampled, so a spike shorter than 0.5 s can be missed; the
sampling's CPU time is ``monitor_cpu_s``). A step whose tree passes ``max_gb``, or during which the
machine's available memory falls below ``min_free_gb``, is stopped (the whole group), so that a runaway
run cannot exhaust a shared machine; so is a step running longer than ``max_minutes``, whose ``progress``
then records the last progress-bar count it printed (e.g. ``37/294`` windows): a step too long for the
machine still gives its rate and its memory so far.
"""
import os
import re
import signal
import subprocess
import time
from pathlib import Path

GB = 1e9
WORKER_EVERY = 6  # samples of the step's own VmRSS per reading of its workers' Pss


def tree_pids(root: int) -> list:
    """``root`` and its descendants (from /proc/<pid>/task/<tid>/children)."""
    pids, todo = [], [root]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        try:
            for task in os.listdir(f"/proc/{pid}/task"):
                todo.extend(int(c) for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split())
        except (OSError, ValueError):
            pass
    return pids


def proc_kb(path: str, *keys: str) -> int:
    """The sum of the ``keys`` (kB) of a /proc file: VmRSS of ``status`` (cheap), Private_* of
    ``smaps_rollup`` (walks the page tables: about 13 ms for a 0.5 GB worker), MemAvailable of meminfo."""
    try:
        return sum(int(line.split()[1]) for line in Path(path).read_text().splitlines() if line.startswith(keys))
    except (OSError, ValueError, IndexError):
        return 0


def has_exec(pid: int, command) -> bool:
    """True once process ``pid`` runs ``command`` (its argv), i.e. has left the forked copy of its parent."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]
    except OSError:
        return False
    return [a.decode(errors="replace") for a in argv] == [str(c) for c in command]


def descendants_private_kb(root: int) -> int:
    """Memory of the descendants of ``root`` that they share with no one: pages forked copy-on-write from
    ``root`` and libraries are already in ``root``'s resident set."""
    keys = ("Private_Clean:", "Private_Dirty:")
    return sum(proc_kb(f"/proc/{p}/smaps_rollup", *keys) for p in tree_pids(root)[1:])


def last_progress(lines) -> str:
    """The last ``done/total`` count a tqdm bar printed in ``lines`` ('' when none)."""
    for line in reversed(lines):
        counts = re.findall(r"\|\s*(\d+/\d+)\s*\[", line)
        if counts:
            return counts[-1]
    return ""


def stop_reason(tree_bytes, max_gb, available_gb, min_free_gb, seconds, max_minutes) -> str:
    """Why a step must stop now ('' while it may go on)."""
    if tree_bytes > max_gb * GB:
        return f"the process tree passed --max_rss_gb {max_gb}"
    if available_gb < min_free_gb:
        return f"the machine's available memory fell below --min_free_gb {min_free_gb}"
    if max_minutes is not None and seconds > 60 * max_minutes:
        return f"the step passed --max_step_minutes {max_minutes:g}"
    return ""


def run_step(command, log_dir: Path, max_gb: float, min_free_gb: float = 0.0, interval: float = 0.5,
             max_minutes: float = None) -> dict:
    """Run ``command``; its wall time, its own peak RSS and its process tree's peak PSS.

    Linux carries the parent's high-water mark into a child across fork and exec, so wait4's ``ru_maxrss``
    is the child's own peak only when it exceeds this process's own peak at the launch; otherwise the
    child's peak is the largest ``VmHWM`` (its high-water mark since exec) seen while it ran."""
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(log_dir / "stdout.txt", "w") as out, open(log_dir / "stderr.txt", "w") as err:
        start, own_cpu = time.perf_counter(), time.process_time()
        inherited_kb = proc_kb("/proc/self/status", "VmHWM:")
        child = subprocess.Popen([str(c) for c in command], stdout=out, stderr=err, start_new_session=True)
        peak_tree_kb, workers_kb, stopped, sample, own_hwm_kb = 0, 0, "", 0, 0
        try:
            while True:
                pid, status, usage = os.wait4(child.pid, os.WNOHANG)
                if pid:
                    break
                if sample % WORKER_EVERY == 0:
                    workers_kb = descendants_private_kb(child.pid)
                sample += 1
                if has_exec(child.pid, command):  # before exec the child's memory is a copy of ours
                    own_hwm_kb = max(own_hwm_kb, proc_kb(f"/proc/{child.pid}/status", "VmHWM:"))
                now_kb = proc_kb(f"/proc/{child.pid}/status", "VmRSS:") + workers_kb
                peak_tree_kb = max(peak_tree_kb, now_kb)
                available_gb = proc_kb("/proc/meminfo", "MemAvailable:") * 1024 / GB
                if not stopped:
                    stopped = stop_reason(now_kb * 1024, max_gb, available_gb, min_free_gb,
                                          time.perf_counter() - start, max_minutes)
                    if stopped:
                        os.killpg(child.pid, signal.SIGTERM)
                time.sleep(interval)
        except BaseException:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
            raise
        child.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - start
    stderr = (log_dir / "stderr.txt").read_text(errors="replace").strip().splitlines()
    stdout = (log_dir / "stdout.txt").read_text(errors="replace").strip().splitlines()
    peak_kb = usage.ru_maxrss if usage.ru_maxrss > inherited_kb else own_hwm_kb
    result = {"ok": child.returncode == 0 and not stopped, "returncode": child.returncode,
              "seconds": round(seconds, 1), "peak_rss_gb": round(max(peak_kb, own_hwm_kb) * 1024 / GB, 3),
              "peak_tree_gb": round(peak_tree_kb * 1024 / GB, 3),
              "monitor_cpu_s": round(time.process_time() - own_cpu, 2),
              "command": " ".join(str(c) for c in command)}
    if stopped:
        result["error"] = f"stopped: {stopped}"
        result["progress"] = last_progress(stderr)  # splitlines split tqdm's carriage-return redraws too
    elif child.returncode != 0:
        result["error"] = stderr[-1] if stderr else f"exit status {child.returncode}"
    elif stdout:
        result["last_line"] = stdout[-1][-300:]
    return result

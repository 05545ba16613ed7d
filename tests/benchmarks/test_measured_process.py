"""A benchmark step run as a measured child process: per-step peaks, workers counted once, stops on memory,
on the machine's free memory and on time, with the whole process group."""
import subprocess
import sys
from pathlib import Path

from benchmarks import measured_process


def _python(code: str) -> list:
    return [sys.executable, "-c", code]


def test_peak_memory_is_per_step_and_counts_workers(tmp_path):
    big = "b = b'x' * 300_000_000; import time; time.sleep(0.6)"
    first = measured_process.run_step(_python(big), tmp_path / "big", max_gb=8)
    ballast = b"x" * 700_000_000  # Linux hands a parent's peak to its children: it must not be reported as theirs
    second = measured_process.run_step(_python("print('small')"), tmp_path / "small", max_gb=8)
    del ballast
    assert first["ok"] and first["peak_rss_gb"] >= 0.3 and first["peak_tree_gb"] >= 0.25
    assert second["ok"] and second["peak_rss_gb"] < 0.15, second  # not the earlier step's peak
    assert second["last_line"] == "small"
    # memory held by a worker process (a child of the step's process) for longer than the workers'
    # sampling interval (3 s) is in the tree's figure
    held = big.replace("sleep(0.6)", "sleep(3.5)")
    worker = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {held!r}])"
    tree = measured_process.run_step(_python(worker), tmp_path / "worker", max_gb=8)
    assert tree["ok"] and tree["peak_tree_gb"] >= 0.25


def test_pages_a_worker_shares_with_the_step_count_once(tmp_path):
    # a forked worker shares the step's 300 MB copy-on-write: the tree holds 0.3 GB, not 0.45 or 0.6
    fork = ("import os, time; b = b'x' * 300_000_000; pid = os.fork()\n"
            "if pid == 0: time.sleep(3.5); os._exit(0)\n"
            "os.waitpid(pid, 0)")
    result = measured_process.run_step(_python(fork), tmp_path / "fork", max_gb=8)
    assert result["ok"] and 0.28 <= result["peak_tree_gb"] < 0.4, result


def test_a_step_is_stopped_when_the_machine_runs_short_of_memory(tmp_path):
    result = measured_process.run_step(_python("import time; time.sleep(60)"), tmp_path / "short", max_gb=8,
                                min_free_gb=1e6)
    assert not result["ok"] and "available memory" in result["error"] and result["returncode"] < 0


def test_a_step_over_its_time_limit_is_stopped_with_its_progress_so_far(tmp_path):
    bar = ("import sys, time\n"
           "for i in range(3): sys.stderr.write(f'\\rwindows:  {i}%|#  | {i}/294 [00:0{i}<01:00]'); sys.stderr.flush()\n"
           "time.sleep(60)")
    result = measured_process.run_step(_python(bar), tmp_path / "slow", max_gb=8, max_minutes=0.03)
    assert not result["ok"] and "--max_step_minutes 0.03" in result["error"] and result["returncode"] < 0
    assert result["progress"] == "2/294" and result["seconds"] < 20


def test_last_progress_reads_the_last_bar_count():
    assert measured_process.last_progress(["cases:   0%|   | 0/1 [00:00<?, ?case/s]", "windows: 40%|####  | 118/294 [01:02<...]",
                                    "a plain line"]) == "118/294"
    assert measured_process.last_progress(["no bar here"]) == ""


def test_a_step_over_the_memory_cap_is_stopped_with_its_workers(tmp_path):
    hog = ("import subprocess, sys, time; w = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
           "print(w.pid, flush=True); b = b'x' * 400_000_000; time.sleep(60)")
    result = measured_process.run_step(_python(hog), tmp_path / "hog", max_gb=0.2)
    assert not result["ok"] and result["error"].startswith("stopped") and result["returncode"] < 0
    worker = int((tmp_path / "hog" / "stdout.txt").read_text().split()[0])
    subprocess.run(["sleep", "0.5"])
    assert not Path(f"/proc/{worker}").exists() or "Z" in Path(f"/proc/{worker}/stat").read_text().split()[2]

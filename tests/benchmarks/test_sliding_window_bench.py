"""The whole-volume sliding-window benchmark runs end to end (MindSpore side only) and reports its figures."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_benchmark(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "benchmarks.sliding_window", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_tiny_volume_reports_times_and_layout():
    done = run_benchmark("--shape", "16", "32", "32", "--patch", "16", "16", "16", "--stages", "2",
                         "--repeats", "1", "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    # 1 x 3 x 3 windows of 16^3 over 16 x 32 x 32 at step 0.5
    assert result["windows"] == 9
    assert result["shape"] == [16, 32, 32] and result["patch"] == [16, 16, 16] and result["stages"] == 2
    assert result["params"] > 0 and result["mirror"] is False
    for key in ("case_s", "case_min_s", "case_cpu_s", "network_s"):
        assert result[key] > 0, key
    assert result["network_s"] <= result["case_s"]
    assert len(result["load_average_start"]) == 3
    assert "case_ratio" not in result  # no reference asked for
    assert result["cpu_kernel_layers"] > 0  # the predictor's CPU kernels are the default


def test_patch_larger_than_volume_is_a_user_error():
    done = run_benchmark("--shape", "8", "32", "32", "--patch", "16", "16", "16", "--stages", "2", "--json")
    assert done.returncode == 2
    assert "error:" in done.stderr and "--shape" in done.stderr

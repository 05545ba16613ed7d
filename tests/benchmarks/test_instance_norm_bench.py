"""The fused instance norm benchmark runs end to end on a tiny tensor and refuses bad arguments in one line."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_benchmark(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "benchmarks.instance_norm", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=180)


def test_tiny_norm_reports_its_times():
    done = run_benchmark("--shape", "1", "2", "4", "4", "4", "--repeats", "2", "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["shape"] == [1, 2, 4, 4, 4] and result["repeats"] == 2
    assert 0 < result["min_s"] <= result["median_s"]


def test_bad_arguments_exit_with_one_line():
    done = run_benchmark("--repeats", "0")
    assert done.returncode != 0
    assert "--repeats" in done.stderr.strip().splitlines()[-1]

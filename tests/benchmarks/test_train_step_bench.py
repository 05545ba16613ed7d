"""The train-step benchmark runs end to end (MindSpore side only) with either convolution kernels."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_benchmark(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "benchmarks.train_step", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=180)


@pytest.mark.parametrize("kernels", ["compiled", "mindspore"])
def test_tiny_step_reports_times_and_kernels(kernels):
    done = run_benchmark("--patch", "16", "16", "16", "--stages", "2", "--base_features", "4", "--repeats", "1",
                         "--warmup", "1", "--kernels", kernels, "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["patch"] == [16, 16, 16] and result["stages"] == 2
    assert result["params"] > 0
    if kernels == "compiled":
        # 2 stages: 2 + 2 encoder and 2 decoder conv-norm-act units (a convolution and a fused norm each),
        # the 1x1x1 head and the upsampling; every convolution compiled, so oneDNN's cap was released
        assert result["cpu_kernel_layers"] == 14 and result["onednn_isa_cap"] is None
    else:
        assert result["cpu_kernel_layers"] == 0 and result["onednn_isa_cap"] == "AVX2"
    for key in ("train_step_s", "infer_s", "train_step_cpu_s"):
        assert result[key] > 0, key


def test_bad_arguments_exit_with_one_line():
    done = run_benchmark("--base_features", "0")
    assert done.returncode != 0
    assert "--base_features" in done.stderr.strip().splitlines()[-1]

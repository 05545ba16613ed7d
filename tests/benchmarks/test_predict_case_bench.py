"""The whole-case prediction benchmark (benchmarks/predict_case.py): its windows ratio, and a tiny run end to
end with a trained and checked first pass (MindSpore side only; the nnU-Net side needs the benchmark venv)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.predict_case import windows_stage_ratio

ROOT = Path(__file__).resolve().parents[2]
TINY = ("device_target: CPU\ntarget_spacing: [6.0, 3.0, 3.0]\npatch_size: [16, 32, 32]\nbase_features: 4\n"
        "max_features: 8\nmax_stages: 3\ntta_mirror: false\npostprocess: none\nlocator_patch_size: [8, 16, 16]\n")


def test_the_windows_ratio_counts_the_first_network_call():
    ours = {"first network call (graph compile)": 19.0, "windows": 0.5, "softmax": 0.1}
    assert windows_stage_ratio(ours, {"network (sliding window)": 240.0}) == pytest.approx(19.5 / 240, abs=1e-3)


@pytest.mark.slow
def test_a_tiny_case_reports_stages_windows_and_the_first_pass_check(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY)
    done = subprocess.run([sys.executable, "-m", "benchmarks.predict_case", "--config", str(config), "--slices",
                           "24", "--rows", "96", "--locate", "crop", "--locator_iters", "3", "--locator_cases", "1",
                           "--json", "--keep", str(tmp_path / "work")],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["completed"] and result["locate"] == "crop" and result["patch_size"] == [16, 32, 32]
    assert "held-out case" in result["locator"]["check"]
    counts = result["window_counts"]
    assert counts["windows run"] + counts["windows skipped"] == result["windows"]
    assert {"read", "locate", "windows", "write labels"} <= set(result["stages"])
    assert (tmp_path / "work" / "out" / "case_00000.nii.gz").is_file()

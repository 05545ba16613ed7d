"""The data-loader benchmark runs end to end on the planner's plan (no plan of its own making)."""
import json
import subprocess
import sys
from pathlib import Path

from benchmarks.data_loader import SETTINGS, setting_plan, write_fake_case
from src.data.preprocessed_case import load_case

ROOT = Path(__file__).resolve().parents[2]


def run_benchmark(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "benchmarks.data_loader", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_help():
    done = run_benchmark("--help")
    assert done.returncode == 0 and "--batches" in done.stdout


def test_a_tiny_run_reports_rates_on_the_planned_topology():
    done = run_benchmark("--batches", "2", "--workers", "1", "--transform_repeats", "1", "--demo_patch", "16", "32",
                         "32", "--settings", "demo", "--skip_train_step", "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    demo = json.loads(done.stdout.strip().splitlines()[-1])["demo"]
    plan = setting_plan(["a", "b"], SETTINGS["demo"]["case_shape"], SETTINGS["demo"]["spacing"], (16, 32, 32))
    assert demo["patch"] == plan.patch_size == [16, 32, 32] and demo["strides"] == plan.strides
    assert demo["in_process_batches_per_s"] > 0 and demo["workers_1"]["batches_per_s"] > 0


def test_the_fake_case_is_one_of_the_plan_s_cases(tmp_path):
    plan = setting_plan(["a"], (20, 24, 24), (3.22, 1.62, 1.62), (16, 16, 16))
    write_fake_case(tmp_path, "a", (20, 24, 24), plan)
    case = load_case(tmp_path, "a", plan.identity)   # refused if written for another plan
    assert case.data.shape == (1, 20, 24, 24) and set(case.fg_locations) == {1, 2}
    assert all(len(coords) for coords in case.fg_locations.values())

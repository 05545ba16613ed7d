"""Worker pools are capped at the CPUs the process may use (``src.cpu_env.cap_workers``), whatever the
config asks (the shipped configs ask for 8; MindSpore's data loader refuses more workers than CPUs)."""
import os

import pytest

import src.cpu_env as cpu_env
import src.data.fingerprint as fingerprint_module
from src.config import Config
from src.data.dataset import build_train_dataset
from src.data.plan import Plan
from src.data.preprocess import preprocess_dataset
from tests.data.test_io import write_kits_case


@pytest.fixture
def cpus(monkeypatch):
    """Pretend the process may run on ``n`` CPUs (its affinity mask) and forget earlier cap notes."""
    monkeypatch.setattr(cpu_env, "_REPORTED_CAPS", set())

    def allow(n):
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(n)))
    return allow


def test_requests_above_the_usable_cpus_are_capped_with_one_note(cpus, capsys):
    cpus(2)
    assert cpu_env.usable_cpus() == 2
    assert cpu_env.cap_workers(8, "loader") == 2
    assert cpu_env.cap_workers(8, "loader") == 2  # asked again (every epoch): no second note
    assert capsys.readouterr().err.splitlines() == [
        "note: loader: 8 workers capped at 2, the CPUs this process may use"]
    assert cpu_env.cap_workers(2, "loader") == 2 and cpu_env.cap_workers(0, "loader") == 1
    assert capsys.readouterr().err == ""
    cpus(16)
    assert cpu_env.cap_workers(8, "loader") == 8


def test_the_data_loader_gets_the_capped_worker_count(cpus, capsys, preprocessed_dir):
    cpus(1)  # one CPU, so the loader MindSpore builds is valid on any machine
    plan = Plan.read(preprocessed_dir / "plans.json")
    cfg = Config(seed=1, batch_size=2, iters_per_epoch=1, num_workers=8, augment=False)
    dataset = build_train_dataset(cfg, plan, preprocessed_dir, plan.cases)
    assert dataset.num_parallel_workers == 1
    assert "data loader (num_workers): 8 workers capped at 1" in capsys.readouterr().err


def test_preprocessing_workers_are_capped(cpus, capsys, monkeypatch, tmp_path):
    cpus(1)

    def no_pool(*args, **kwargs):
        raise AssertionError("a process pool was started although one CPU is usable")
    monkeypatch.setattr(fingerprint_module.multiprocessing, "get_context", no_pool)
    for i in range(2):
        write_kits_case(tmp_path / "raw", f"case_{i:05d}", seed=i)
    preprocess_dataset(tmp_path / "raw", tmp_path / "pre", target_spacing=[3.0, 1.6, 1.6], patch_budget_voxels=4096,
                       num_folds=2, workers=8, progress=False, foreground_pool_size=1000)
    assert capsys.readouterr().err.count("preprocessing (--workers): 8 workers capped at 1") == 1


def test_memory_limit_is_the_lower_of_physical_memory_and_the_cgroup_limit(monkeypatch, tmp_path):
    pages = {"SC_PAGE_SIZE": 4096, "SC_PHYS_PAGES": 1024 * 1024}  # 4 GiB
    monkeypatch.setattr(os, "sysconf", lambda name: pages[name])
    limit = tmp_path / "memory.max"
    monkeypatch.setattr(cpu_env, "_CGROUP_MEMORY_LIMITS", (str(tmp_path / "absent"), str(limit)))
    limit.write_text("max\n")  # cgroup v2 without a limit
    assert cpu_env.memory_limit_bytes() == 4 * 2 ** 30
    limit.write_text(f"{2 ** 30}\n")
    assert cpu_env.memory_limit_bytes() == 2 ** 30
    limit.write_text(f"{8 * 2 ** 30}\n")
    assert cpu_env.memory_limit_bytes() == 4 * 2 ** 30

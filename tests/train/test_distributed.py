import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from mindspore import nn

from src.train import distributed
from src.train.distributed import (ParallelInfo, all_gather_rows, all_reduce_sum, launched_distributed,
                                   weight_checksums, weights_identical_across_ranks)
from tests.data.preprocessed_fixture import make_preprocessed_folder
from tests.helpers import free_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("env,expected", [
    ({}, False),
    ({"MS_ROLE": "MS_WORKER"}, True),
    ({"RANK_TABLE_FILE": "/x.json", "RANK_SIZE": "8"}, True),
    ({"RANK_TABLE_FILE": "/x.json", "RANK_SIZE": "1"}, False),
    ({"RANK_SIZE": "8"}, False),
    ({"OMPI_COMM_WORLD_SIZE": "4"}, True),
])
def test_launch_detection(env, expected):
    assert launched_distributed(env) is expected


def test_single_process_reductions_are_identities():
    info = ParallelInfo()
    assert not info.distributed and info.is_main
    values = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(all_reduce_sum(values, info), values)
    np.testing.assert_array_equal(all_gather_rows([1.0, 2.0], info), [[1.0, 2.0]])


def test_weight_check_compares_every_rank(monkeypatch):
    net = nn.Dense(3, 2)
    local = weight_checksums(net)
    assert local.shape == (4,)
    info = ParallelInfo(rank=0, world=2)
    monkeypatch.setattr(distributed, "all_gather_rows", lambda values, info: np.stack([values, values]))
    assert weights_identical_across_ranks(net, info)
    monkeypatch.setattr(distributed, "all_gather_rows", lambda values, info: np.stack([values, values + 1e-6]))
    assert not weights_identical_across_ranks(net, info)


@pytest.mark.slow
@pytest.mark.parametrize("micro_batch_size", ["auto", "1"])
def test_distribute_script_trains_two_cpu_workers_to_identical_weights(tmp_path, micro_batch_size):
    data = tmp_path / "pre"
    make_preprocessed_folder(data, patch_size=(16, 16, 16), strides=[[1, 1, 1], [2, 2, 2], [2, 2, 2]])
    out = tmp_path / "out"
    env = dict(os.environ, DEVICE_TARGET="CPU", MASTER_PORT=str(free_port()))
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "run_distribute_train.sh"), str(ROOT / "config" / "demo.yaml"), str(data),
         str(out), "2", "--epochs", "1", "--iters_per_epoch", "2", "--val_iters", "1", "--num_workers", "0",
         "--target_spacing", "null", "--micro_batch_size", micro_batch_size],
        capture_output=True, text=True, env=env, timeout=900)
    log = (out / "fold_0" / "training_log.txt").read_text() if (out / "fold_0" / "training_log.txt").exists() else ""
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "world size 2" in log
    assert "world size 2: all ranks hold identical weights: yes" in log
    # 1: each rank's step sums its micro-batches' gradients before the one all-reduce
    assert ("batch 2 as 2 micro-batches of 1" in log) == (micro_batch_size == "1")
    assert (out / "fold_0" / "checkpoint_latest.ckpt").is_file()
    assert (out / "msrun_log" / "worker_1.log").is_file()


def _script_outside_checkout(tmp_path) -> Path:
    """A copy of the launcher with no .venv/bin beside it to put first on PATH: a test's msrun is the one found."""
    copy = tmp_path / "repo" / "scripts" / "run_distribute_train.sh"
    copy.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "scripts" / "run_distribute_train.sh", copy)
    return copy


def _distribute_script(*args, env_overrides: dict, script=ROOT / "scripts" / "run_distribute_train.sh"):
    env = dict(os.environ, **env_overrides)
    for name in ("NNODES", "NODE_RANK", "MASTER_ADDR"):
        if name not in env_overrides:
            env.pop(name, None)
    return subprocess.run(["bash", str(script), *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=60)


@pytest.mark.parametrize("cluster, message", [
    ({"NNODES": "0"}, "NNODES must be a positive integer, got '0'"),
    ({"NNODES": "two"}, "NNODES must be a positive integer, got 'two'"),
    ({"NNODES": "2", "NODE_RANK": "2", "MASTER_ADDR": "127.0.0.1"}, "NODE_RANK must be an integer from 0 to"),
    ({"NNODES": "2", "NODE_RANK": "-1", "MASTER_ADDR": "127.0.0.1"}, "NODE_RANK must be an integer from 0 to"),
    ({"NNODES": "2", "NODE_RANK": "1"}, "NNODES=2 needs MASTER_ADDR"),
])
def test_cluster_settings_are_checked_before_msrun(tmp_path, cluster, message):
    data = tmp_path / "pre"
    data.mkdir()
    (data / "plans.json").write_text("{}")
    # msrun on PATH would record that it ran: the check must stop the script first
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "msrun").write_text(f"#!/bin/sh\ntouch {tmp_path / 'msrun_ran'}\n")
    (fake_bin / "msrun").chmod(0o755)
    result = _distribute_script(ROOT / "config" / "demo.yaml", data, tmp_path / "out", 1,
                                script=_script_outside_checkout(tmp_path),
                                env_overrides=dict(cluster, PATH=f"{fake_bin}:{os.environ['PATH']}"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: {result.stderr.strip()[len('error: '):]}"]
    assert message in result.stderr
    assert not (tmp_path / "msrun_ran").exists()


def test_cluster_launch_passes_world_size_node_rank_and_master_to_msrun(tmp_path):
    data = tmp_path / "pre"
    data.mkdir()
    (data / "plans.json").write_text("{}")
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "msrun").write_text(f"#!/bin/sh\nprintf '%s\\n' \"$@\" > {tmp_path / 'msrun_args'}\n")
    (fake_bin / "msrun").chmod(0o755)
    result = _distribute_script(ROOT / "config" / "demo.yaml", data, tmp_path / "out", 8, "--fold", "1",
                                script=_script_outside_checkout(tmp_path),
                                env_overrides={"PATH": f"{fake_bin}:{os.environ['PATH']}", "NNODES": "2",
                                               "NODE_RANK": "1", "MASTER_ADDR": "10.0.0.7", "MASTER_PORT": "9123"})
    assert result.returncode == 0, result.stderr
    args = (tmp_path / "msrun_args").read_text().splitlines()
    assert args[:5] == ["--worker_num=16", "--local_worker_num=8", "--node_rank=1", "--master_addr=10.0.0.7",
                        "--master_port=9123"]
    assert f"--log_dir={tmp_path / 'out' / 'msrun_log'}" in args
    assert args[args.index("--fold") + 1] == "1"


@pytest.mark.slow
def test_two_nodes_on_one_host_train_to_identical_weights(tmp_path):
    """Two launcher calls as two nodes of one world (NODE_RANK 0 and 1, one worker each, one master port)."""
    data = tmp_path / "pre"
    make_preprocessed_folder(data, patch_size=(16, 16, 16), strides=[[1, 1, 1], [2, 2, 2], [2, 2, 2]])
    out = tmp_path / "out"
    port = str(free_port())
    nodes = []
    for node_rank in (0, 1):
        env = dict(os.environ, DEVICE_TARGET="CPU", NNODES="2", NODE_RANK=str(node_rank), MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=port)
        nodes.append(subprocess.Popen(
            ["bash", str(ROOT / "scripts" / "run_distribute_train.sh"), str(ROOT / "config" / "demo.yaml"),
             str(data), str(out), "1", "--epochs", "1", "--iters_per_epoch", "2", "--val_iters", "1",
             "--num_workers", "0", "--target_spacing", "null"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env))
    outputs = [node.communicate(timeout=900)[0] for node in nodes]
    log_file = out / "fold_0" / "training_log.txt"
    log = log_file.read_text() if log_file.exists() else ""
    assert [node.returncode for node in nodes] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    assert "world size 2: all ranks hold identical weights: yes" in log
    assert (out / "msrun_log" / "worker_0.log").is_file() and (out / "msrun_log" / "worker_1.log").is_file()

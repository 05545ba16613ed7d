import os
import socket
import subprocess
from pathlib import Path

import numpy as np
import pytest
from mindspore import nn

from src.train import distributed
from src.train.distributed import (ParallelInfo, all_gather_rows, all_reduce_sum, launched_distributed,
                                   weight_checksums, weights_identical_across_ranks)
from tests.data.preprocessed_fixture import make_preprocessed_folder

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


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_distribute_script_trains_two_cpu_workers_to_identical_weights(tmp_path):
    data = tmp_path / "pre"
    make_preprocessed_folder(data, patch_size=(16, 16, 16), strides=[[1, 1, 1], [2, 2, 2], [2, 2, 2]])
    out = tmp_path / "out"
    env = dict(os.environ, DEVICE_TARGET="CPU", MASTER_PORT=str(_free_port()))
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "run_distribute_train.sh"), str(ROOT / "config" / "demo.yaml"), str(data),
         str(out), "2", "--epochs", "1", "--iters_per_epoch", "2", "--val_iters", "1", "--num_workers", "0",
         "--target_spacing", "null"],
        capture_output=True, text=True, env=env, timeout=900)
    log = (out / "fold_0" / "training_log.txt").read_text() if (out / "fold_0" / "training_log.txt").exists() else ""
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "world size 2" in log
    assert "world size 2: all ranks hold identical weights: yes" in log
    assert (out / "fold_0" / "checkpoint_latest.ckpt").is_file()
    assert (out / "msrun_log" / "worker_1.log").is_file()

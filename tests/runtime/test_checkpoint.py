import json
import os

import numpy as np
import pytest
import mindspore as ms
from mindspore import nn

from src.errors import UserError
from src.runtime.checkpoint import (is_training_state, load_network_weights, read_checkpoint_meta,
                                  read_training_checkpoint, restore_parameters, save_training_checkpoint)


def _train_cell(out_features=2, seed=0):
    ms.set_seed(seed)
    net = nn.Dense(3, out_features)
    opt = nn.SGD(net.trainable_params(), learning_rate=ms.Tensor(0.1, ms.float32), momentum=0.9, nesterov=True)
    return net, nn.TrainOneStepCell(nn.WithLossCell(net, nn.MSELoss()), opt)


def _step(cell, out_features=2):
    x = ms.Tensor(np.ones((4, 3), np.float32))
    y = ms.Tensor(np.zeros((4, out_features), np.float32))
    cell(x, y)


def test_round_trip_restores_weights_optimizer_state_and_meta(tmp_path):
    _, cell = _train_cell()
    _step(cell)
    cell.optimizer.learning_rate.set_data(ms.Tensor(0.05, ms.float32))
    meta = {"epoch": 3, "ema": 0.5, "plan": {"patch_size": [16, 16, 16]}, "config": {"lr": 0.01}}
    path = tmp_path / "checkpoint_latest.ckpt"
    save_training_checkpoint(path, cell, meta)
    assert sorted(os.listdir(tmp_path)) == ["checkpoint_latest.ckpt"]

    _, fresh = _train_cell(seed=1)
    params, loaded_meta = read_training_checkpoint(path)
    assert restore_parameters(fresh, params, path) == []
    for old, new in zip(cell.get_parameters(), fresh.get_parameters()):
        assert old.name == new.name
        np.testing.assert_array_equal(old.asnumpy(), new.asnumpy())
    assert any(name.startswith("accum.") for name in params)
    assert float(fresh.optimizer.learning_rate.asnumpy()) == pytest.approx(0.05)
    assert loaded_meta["epoch"] == 3 and loaded_meta["plan"] == meta["plan"]
    assert read_checkpoint_meta(path)["config"] == {"lr": 0.01}


def test_network_weights_load_without_optimizer_entries(tmp_path):
    net, cell = _train_cell()
    _step(cell)
    path = tmp_path / "c.ckpt"
    save_training_checkpoint(path, cell, {"epoch": 1})
    bare = nn.Dense(3, 2)
    assert load_network_weights(bare, path)["epoch"] == 1
    np.testing.assert_array_equal(bare.weight.asnumpy(), net.weight.asnumpy())
    assert is_training_state("accum.weight") and not is_training_state("weight")


def test_missing_checkpoint_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="not found"):
        read_training_checkpoint(tmp_path / "nope.ckpt")


def test_corrupt_checkpoint_is_a_user_error(tmp_path):
    path = tmp_path / "bad.ckpt"
    path.write_bytes(b"\x00garbage" * 50)
    with pytest.raises(UserError, match="corrupt"):
        read_training_checkpoint(path)


def test_foreign_checkpoint_without_meta_is_a_user_error(tmp_path):
    net, _ = _train_cell()
    path = tmp_path / "plain.ckpt"
    ms.save_checkpoint(net, str(path))
    with pytest.raises(UserError, match="not a training checkpoint"):
        read_training_checkpoint(path)


def test_incompatible_checkpoint_is_a_user_error(tmp_path):
    _, cell = _train_cell(out_features=2)
    path = tmp_path / "c.ckpt"
    save_training_checkpoint(path, cell, {"epoch": 1})
    _, other = _train_cell(out_features=5)
    params, _ = read_training_checkpoint(path)
    with pytest.raises(UserError, match="does not fit"):
        restore_parameters(other, params, path)


def test_wrong_format_version_is_a_user_error(tmp_path):
    net, _ = _train_cell()
    path = tmp_path / "old.ckpt"
    ms.save_checkpoint(net, str(path), append_dict={"kitseg_meta": json.dumps({"format_version": 0})})
    with pytest.raises(UserError, match="format version"):
        read_training_checkpoint(path)


def test_adamw_moments_are_training_state_and_round_trip(tmp_path):
    from src.config import load_config
    from src.train.trainer import build_optimizer

    ms.set_seed(0)
    net = nn.Dense(3, 2)
    cfg = load_config("config/demo.yaml", {"optimizer": "adamw", "lr": 0.003})
    cell = nn.TrainOneStepCell(nn.WithLossCell(net, nn.MSELoss()), build_optimizer(cfg, net, cfg.lr))
    _step(cell)
    path = tmp_path / "adam.ckpt"
    save_training_checkpoint(path, cell, {"epoch": 1})
    params, _ = read_training_checkpoint(path)
    weights = {name for name in params if not is_training_state(name)}
    assert weights == {"weight", "bias"}
    assert any(name.startswith("adam_v.") for name in params)
    other = nn.Dense(3, 2)
    fresh = nn.TrainOneStepCell(nn.WithLossCell(other, nn.MSELoss()), build_optimizer(cfg, other, 0.1))
    assert restore_parameters(fresh, params, path) == []
    np.testing.assert_array_equal(fresh.optimizer.moments2[0].asnumpy(), cell.optimizer.moments2[0].asnumpy())
    assert float(fresh.optimizer.learning_rate.asnumpy()) == pytest.approx(0.003)

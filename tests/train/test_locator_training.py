"""train.py trains the locator after the main network and stores it in the fold's checkpoints."""
import pytest

from src.runtime.checkpoint import read_training_checkpoint
from src.train.locator_training import PREFIX
from src.train.trainer import train_fold
from tests.train.tiny_training import tiny_config


@pytest.mark.slow
def test_train_fold_with_locator_iters_stores_the_locator_in_both_checkpoints(tiny_data, tmp_path):
    cfg = tiny_config(epochs=1, locator_iters=2, locator_patch_size=[8, 8, 8], locator_spacing_mm=2.0)
    train_fold(cfg, tiny_data, 0, tmp_path)
    for name in ("checkpoint_best.ckpt", "checkpoint_latest.ckpt"):
        params, meta = read_training_checkpoint(tmp_path / "fold_0" / name)
        assert meta["locator"]["patch_size"] == [8, 8, 8]
        assert any(key.startswith(PREFIX) for key in params)
    log = (tmp_path / "fold_0" / "training_log.txt").read_text()
    assert "locator: 2 steps" in log


def test_no_locator_without_locator_iters(tiny_data, tmp_path):
    cfg = tiny_config(epochs=1, iters_per_epoch=1, val_iters=0)
    train_fold(cfg, tiny_data, 0, tmp_path)
    params, meta = read_training_checkpoint(tmp_path / "fold_0" / "checkpoint_best.ckpt")
    assert "locator" not in meta and not any(key.startswith(PREFIX) for key in params)

"""A tiny trained-looking model for inference tests: a 2-stage U-Net (features 4-8) saved as a training
checkpoint with its plan and config, and a fixture that restores MindSpore's execution mode."""
import copy
from pathlib import Path

import mindspore as ms
import pytest

from src.config import Config
from src.models import build_network
from src.train.checkpoint import save_training_checkpoint

TINY_PLAN = {
    "dataset": "kits19",
    "labels": {"background": 0, "kidney": 1, "tumor": 2},
    "num_classes": 3,
    "num_channels": 1,
    "normalization": "ct",
    "intensity": {"mean": 100.0, "std": 80.0, "p005": -200.0, "p995": 400.0},
    "target_spacing": [3.0, 1.5, 1.5],
    "patch_size": [8, 16, 16],
    "batch_size": 2,
    "conv_kernel_sizes": [[3, 3, 3], [3, 3, 3]],
    "strides": [[1, 1, 1], [2, 2, 2]],
    "features": [4, 8],
    "separate_z": False,
    "anisotropy_axis": None,
}


def tiny_plan(**changes) -> dict:
    plan = copy.deepcopy(TINY_PLAN)
    plan.update(changes)
    return plan


def tiny_config(**changes) -> Config:
    base = Config(name="tiny", device_target="CPU", network="plain_unet", base_features=4, max_features=8,
                  deep_supervision=True, tta_mirror=False, sw_batch_size=2, amp_level="O0", postprocess="none")
    return base.replace(**changes)


def write_tiny_checkpoint(path, seed: int = 0, plan: dict = None, cfg: Config = None):
    """A training checkpoint (network weights + plan + config) of a randomly initialised tiny U-Net."""
    plan = plan or tiny_plan()
    cfg = cfg or tiny_config()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    ms.set_seed(seed)
    network = build_network(cfg, plan)
    save_training_checkpoint(path, network, {"config": cfg.to_dict(), "plan": plan, "epoch": 1})
    return path


@pytest.fixture
def restore_mode():
    """load_predictor switches to graph mode; put back whatever the other tests expect."""
    previous = ms.get_context("mode")
    yield
    ms.set_context(mode=previous)

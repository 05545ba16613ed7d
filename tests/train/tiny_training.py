"""The tiny training set-up the trainer tests share: a 16^3-patch, 3-stage, 4-feature U-Net on CPU."""
from pathlib import Path

from src.config import load_config

ROOT = Path(__file__).resolve().parents[2]
TINY_STRIDES = [[1, 1, 1], [2, 2, 2], [2, 2, 2]]


def tiny_config(**overrides):
    values = {"device_target": "CPU", "epochs": 2, "iters_per_epoch": 2, "val_iters": 1, "batch_size": 2,
              "num_workers": 0, "base_features": 4, "max_features": 16, "ds_weights": None, "amp_level": "O0",
              "seed": 7, "target_spacing": None, "optimizer": "sgd", "lr": 0.01, "train_minutes": None}
    values.update(overrides)
    return load_config(ROOT / "config" / "demo.yaml", values)

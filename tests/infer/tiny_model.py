"""A tiny trained-looking model for inference tests: a 2-stage U-Net (features 4-8) saved as a training
checkpoint with its plan and config (the fixture that restores MindSpore's execution mode,
``restore_mode``, is in tests/conftest.py)."""
from pathlib import Path

import mindspore as ms

from src.config import Config
from src.data.plan import Plan
from src.models import build_network
from src.runtime.checkpoint import save_training_checkpoint

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


def tiny_plan(**changes) -> Plan:
    return Plan.from_json({**TINY_PLAN, **changes})


def tiny_config(**changes) -> Config:
    base = Config(name="tiny", device_target="CPU", network="plain_unet", base_features=4, max_features=8,
                  deep_supervision=True, tta_mirror=False, sw_batch_size=2, amp_level="O0", postprocess="none")
    return base.replace(**changes)


def write_tiny_checkpoint(path, seed: int = 0, plan: Plan = None, cfg: Config = None):
    """A training checkpoint (network weights + plan + config) of a randomly initialised tiny U-Net."""
    plan = plan or tiny_plan()
    cfg = cfg or tiny_config()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    ms.set_seed(seed)
    network = build_network(cfg, plan)
    save_training_checkpoint(path, network, {"config": cfg.to_dict(), "plan": plan.to_json(), "epoch": 1})
    return path


def write_tiny_kits19(raw_dir, num_cases: int = 4, seed: int = 0, shape=(12, 40, 40)):
    """KiTS19-layout cases: a body in air, two kidneys (one with a tumour), 3 x 0.78 mm voxels."""
    import nibabel as nib
    import numpy as np

    rng = np.random.default_rng(seed)
    spacing = (3.0, 0.78125, 0.78125)
    affine = np.array([[0, 0, -spacing[2], 0], [0, -spacing[1], 0, 0], [-spacing[0], 0, 0, 0], [0, 0, 0, 1]])
    grid = np.indices(shape).astype(np.float32)
    ids = []
    for i in range(num_cases):
        image = rng.normal(0, 10, shape).astype(np.float32) - 1000
        label = np.zeros(shape, np.uint8)
        image[:, 5:35, 3:37] = rng.normal(40, 10, (shape[0], 30, 34))
        for centre_col in (11, 29):
            centre = np.array([6 + rng.integers(-1, 2), 20 + rng.integers(-2, 3), centre_col])
            dist = (((grid - centre[:, None, None, None]) * np.array(spacing)[:, None, None, None]) ** 2).sum(0)
            label[dist < 5.5 ** 2] = 1
        tumour = np.array([6, 20, 29 + rng.integers(-1, 2)])
        dist = (((grid - tumour[:, None, None, None]) * np.array(spacing)[:, None, None, None]) ** 2).sum(0)
        label[dist < 3.5 ** 2] = 2
        image[label == 1] += 150
        image[label == 2] += 60
        case_dir = Path(raw_dir) / f"case_{i:05d}"
        case_dir.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(image, affine), case_dir / "imaging.nii.gz")
        nib.save(nib.Nifti1Image(label, affine), case_dir / "segmentation.nii.gz")
        ids.append(case_dir.name)
    return ids


def make_tiny_dataset(root):
    """(raw dir, preprocessed dir, plan): 4 KiTS19-style cases, 2 folds, patch 8 x 16 x 16."""
    from src.data.preprocess import preprocess_dataset

    raw, pre = Path(root) / "raw", Path(root) / "pre"
    write_tiny_kits19(raw)
    plan = preprocess_dataset(raw, pre, target_spacing=[3.0, 1.5, 1.5], patch_size=[8, 16, 16], base_features=4,
                              max_features=8, max_stages=2, num_folds=2, workers=1, progress=False)
    return raw, pre, plan

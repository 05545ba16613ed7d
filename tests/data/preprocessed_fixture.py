"""Tiny preprocessed folders in the on-disk format of the team brief, for any test that needs one.

Use ``make_preprocessed_folder(path)`` directly, or the ``preprocessed_dir`` fixture (tests/conftest.py).
"""
import json
from pathlib import Path

import numpy as np

from src.data.plan import Plan
from src.data.preprocessed_case import PLAN_ID_MEMBER, plan_id_array

LABELS = {"background": 0, "kidney": 1, "tumor": 2}
DEFAULT_SHAPES = {"case_00000": (24, 40, 40), "case_00001": (20, 36, 44), "case_00002": (28, 32, 32)}
DEFAULT_PATCH = (16, 32, 32)
DEFAULT_STRIDES = [[1, 1, 1], [2, 2, 2], [2, 2, 2], [1, 2, 2]]


def ball(shape, centre, radius) -> np.ndarray:
    grid = np.indices(shape, dtype=np.float32)
    dist2 = sum((g - c) ** 2 for g, c in zip(grid, centre))
    return dist2 <= radius ** 2


def synthetic_case(shape, seed: int, with_foreground: bool = True):
    """(data (1,...) float32, seg int8): noisy background, a 'kidney' ball with a 'tumour' ball inside,
    the outermost slice marked -1 (outside the nonzero mask) as preprocessing writes it."""
    rng = np.random.default_rng(seed)
    data = rng.normal(0.0, 0.3, size=(1, *shape)).astype(np.float32)
    seg = np.zeros(shape, dtype=np.int8)
    if with_foreground:
        centre = [s * f for s, f in zip(shape, rng.uniform(0.3, 0.7, size=3))]
        kidney = ball(shape, centre, min(shape) / 4)
        tumour = ball(shape, [c + 1 for c in centre], min(shape) / 10)
        seg[kidney] = 1
        seg[tumour] = 2
    seg[0] = -1
    data[0][seg == 1] += 2.0
    data[0][seg == 2] += 3.0
    return data, seg


def foreground_locations(seg, labels=(1, 2), limit=10000) -> dict:
    return {label: np.argwhere(seg == label)[:limit].astype(np.int32).reshape(-1, 3) for label in labels}


def write_preprocessed_case(folder, case_id, data, seg, compressed=False, extra_fg=None, plan_id=None) -> Path:
    """``plan_id``: the identity of the plan the case belongs to (default: ``make_plan``'s)."""
    folder = Path(folder)
    plan_id = Plan.from_json(make_plan([case_id])).identity if plan_id is None else plan_id
    arrays = {"data": data, "seg": seg, PLAN_ID_MEMBER: plan_id_array(plan_id)}
    fg = foreground_locations(seg) if extra_fg is None else extra_fg
    arrays.update({f"fg_{label}": coords for label, coords in fg.items()})
    path = folder / f"{case_id}.npz"
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    shape = list(seg.shape)
    (folder / f"{case_id}.json").write_text(json.dumps({
        "case_id": case_id, "task_id": None, "plan_id": plan_id, "image_meta": None, "original_spacing": [3.0, 0.8, 0.8],
        "shape_before_crop": shape, "crop_bbox": [[0, s] for s in shape], "shape_after_crop": shape,
        "shape_after_resample": shape, "labels_present": [label for label, c in fg.items() if len(c)]}))
    return path


def make_plan(case_ids, patch_size=DEFAULT_PATCH, strides=None, batch_size=2) -> dict:
    strides = DEFAULT_STRIDES if strides is None else strides
    return {
        "dataset": "kits19", "labels": LABELS, "num_classes": 3, "num_channels": 1, "normalization": "ct",
        "intensity": {"mean": 100.0, "std": 50.0, "p005": -80.0, "p995": 300.0},
        "target_spacing": [3.0, 1.6, 1.6], "median_shape": [24, 40, 40], "patch_size": list(patch_size),
        "batch_size": batch_size, "conv_kernel_sizes": [[3, 3, 3]] * len(strides), "strides": strides,
        "features": [8 * 2 ** i for i in range(len(strides))], "separate_z": False, "anisotropy_axis": None,
        "cases": sorted(case_ids), "num_folds": 1}


def make_preprocessed_folder(folder, shapes=None, patch_size=DEFAULT_PATCH, strides=None, empty_case=None,
                             compressed=False, seed=0) -> dict:
    """Write plans.json, splits.json and <case>.npz/.json; ``empty_case`` names a case without foreground.
    Returns the plan."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    shapes = DEFAULT_SHAPES if shapes is None else shapes
    plan = make_plan(shapes, patch_size, strides)
    for i, (case_id, shape) in enumerate(sorted(shapes.items())):
        data, seg = synthetic_case(shape, seed + i, with_foreground=case_id != empty_case)
        write_preprocessed_case(folder, case_id, data, seg, compressed=compressed, plan_id=Plan.from_json(plan).identity)
    (folder / "plans.json").write_text(json.dumps(plan))
    ids = sorted(shapes)
    (folder / "splits.json").write_text(json.dumps([{"train": ids[1:], "val": ids[:1]}]))
    return plan

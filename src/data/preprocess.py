"""Preprocessing: crop to nonzero, CT normalization, resampling to the target spacing, on-disk cases.

One code path (``_crop_normalize_resample``) serves training cases (with label) and inference images.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from src.data.fingerprint import (FOREGROUND_POOL_SIZE, compute_fingerprint, crop_to_nonzero, map_cases,
                                  raise_for_failures)
from src.data.io import CaseFiles, ImageMeta, dataset_labels, dataset_tasks, detect_layout, find_cases, load_image, load_label
from src.data.partial_labels import mots_task_channels
from src.data.planning import make_splits, plan_experiment
from src.data.resample import compute_new_shape, needs_separate_z, resample_image, resample_segmentation
from src.errors import UserError
from src.files import atomic_write, atomic_write_json

MAX_FOREGROUND_COORDS = 10_000
FOREGROUND_COORD_SEED = 1234


def normalize_intensity(data: np.ndarray, plan: dict) -> np.ndarray:
    """CT normalization of (C, ...) data as the plan says; returns a new float32 array."""
    data = np.asarray(data, dtype=np.float32)
    if plan["normalization"] == "ct":
        stats = plan["intensity"]
        data = np.clip(data, stats["p005"], stats["p995"])
        data -= np.float32(stats["mean"])
        data /= np.float32(max(stats["std"], 1e-8))
        return data
    if plan["normalization"] == "ct_clip_scale":
        low, high = plan["clip_window"]
        data = np.clip(data, low, high)
        data /= np.float32(max(abs(low), abs(high)))
        return data
    raise UserError(f"unknown normalization {plan['normalization']!r} in plans.json")


def _crop_normalize_resample(image: np.ndarray, seg: np.ndarray | None, spacing, plan: dict):
    """(data (1, ...) float32, seg int8 or None, properties) at the plan's target spacing.

    nnU-Net v2 order: crop, normalize, then resample.
    """
    spacing = [float(s) for s in spacing]
    target = [float(s) for s in plan["target_spacing"]]
    data, seg, bbox = crop_to_nonzero(image[None].astype(np.float32, copy=False), seg)
    shape_after_crop = list(data.shape[1:])
    data = normalize_intensity(data, plan)
    new_shape = tuple(int(s) for s in compute_new_shape(shape_after_crop, spacing, target))
    separate_axis = needs_separate_z(spacing, target)
    if new_shape != tuple(shape_after_crop):
        data = resample_image(data, spacing, new_shape, order=3, separate_z_axis=separate_axis)
        if seg is not None:
            seg = resample_segmentation(seg, spacing, new_shape, separate_axis)
    data = np.ascontiguousarray(data, dtype=np.float32)
    if seg is not None:
        seg = np.ascontiguousarray(seg, dtype=np.int8)
    properties = {
        "original_spacing": spacing,
        "target_spacing": target,
        "shape_before_crop": [int(s) for s in image.shape],
        "crop_bbox": bbox,
        "shape_after_crop": shape_after_crop,
        "shape_after_resample": [int(s) for s in data.shape[1:]],
        "separate_z_axis": None if separate_axis is None else int(separate_axis),
    }
    return data, seg, properties


def preprocess_image_for_inference(image: np.ndarray, meta: ImageMeta, plan: dict):
    """(data (1, ...) float32, properties) for an unlabelled image, as preprocess_case would do it."""
    data, _, properties = _crop_normalize_resample(image, None, meta.spacing, plan)
    properties["image_meta"] = meta.to_json()
    return data, properties


def sample_foreground_coords(seg: np.ndarray, label_values, max_samples: int = MAX_FOREGROUND_COORDS,
                             seed: int = FOREGROUND_COORD_SEED) -> dict[int, np.ndarray]:
    """Per label, up to ``max_samples`` voxel coordinates (N, 3) int32, drawn without replacement."""
    rng = np.random.RandomState(seed)
    coords = {}
    for value in sorted(int(v) for v in label_values):
        locations = np.argwhere(seg == value)
        if len(locations) > max_samples:
            chosen = np.sort(rng.choice(len(locations), max_samples, replace=False))
            locations = locations[chosen]
        coords[value] = locations.astype(np.int32).reshape(-1, 3)
    return coords


def preprocess_case(case: CaseFiles, plan: dict, out_dir) -> dict:
    """Write ``<case>.npz`` (data, seg, fg_<label>) and ``<case>.json``; returns the case properties."""
    if case.label is None:
        raise UserError(f"case {case.case_id}: no label file next to {case.image}")
    image, meta = load_image(case.image)
    seg = load_label(case.label, like=meta)
    if seg.max() > np.iinfo(np.int8).max:
        raise UserError(f"case {case.case_id}: label values above {np.iinfo(np.int8).max} are not supported")
    data, seg, properties = _crop_normalize_resample(image, seg, meta.spacing, plan)
    foreground_values = [v for v in plan["labels"].values() if v > 0]
    coords = sample_foreground_coords(seg, foreground_values)
    arrays = {"data": data, "seg": seg}
    arrays.update({f"fg_{value}": c for value, c in coords.items()})
    out_dir = Path(out_dir)
    atomic_write(out_dir / f"{case.case_id}.npz", lambda handle: np.savez(handle, **arrays))
    case_json = {
        "case_id": case.case_id,
        "task_id": case.task_id,
        "image_meta": meta.to_json(),
        **properties,
        "labels_present": [value for value, c in coords.items() if len(c)],
    }
    atomic_write_json(out_dir / f"{case.case_id}.json", case_json)
    return case_json


def _labelled_cases(raw: Path, layout: str) -> list[CaseFiles]:
    if layout in ("single", "flat"):
        raise UserError(f"{raw} holds unlabelled images ({layout} layout): preprocessing needs a labelled "
                        f"dataset (KiTS, MSD or MOTS folder); use predict.py for inference")
    cases = find_cases(raw)
    labelled = [c for c in cases if c.label is not None]
    unlabelled = [c.case_id for c in cases if c.label is None]
    if not labelled:
        raise UserError(f"no case in {raw} has a segmentation: preprocessing needs labelled cases")
    if unlabelled:
        # KiTS19 ships its test cases (imaging only) in the same folder as the training cases.
        shown = ", ".join(unlabelled[:3]) + (" ..." if len(unlabelled) > 3 else "")
        print(f"note: skipping {len(unlabelled)} case(s) without segmentation (inference only): {shown}",
              file=sys.stderr)
    return labelled


def preprocess_dataset(raw_dir, out_dir, target_spacing=None, patch_size=None, patch_budget_voxels=128 ** 3,
                       image_budget_voxels=None, base_features=32, max_features=320, max_stages=None, batch_size=2, normalization="ct",
                       clip_window=None, num_folds=5, workers=2, progress=True,
                       foreground_pool_size=FOREGROUND_POOL_SIZE) -> dict:
    """Fingerprint, plan and preprocess a labelled dataset into ``out_dir``; returns the plan.

    Writes plans.json, splits.json and per case <case>.npz + <case>.json. Broken cases are reported and
    skipped while the others finish; a UserError listing them is raised at the end.
    """
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    layout = detect_layout(raw_dir)
    cases = _labelled_cases(raw_dir, layout)
    make_splits([c.case_id for c in cases], num_folds)  # too few cases for the folds: say so before any work
    labels = dataset_labels(raw_dir)
    tasks = dataset_tasks(raw_dir)
    # DoDNet's per-task (organ, tumour) label values, checked before the long fingerprinting run
    task_channels = mots_task_channels(raw_dir, tasks) if tasks is not None else None
    fingerprint = compute_fingerprint(cases, workers, pool_size=foreground_pool_size, progress=progress,
                                      collect_failures=True, label_values=list(labels.values()))
    failures = dict(fingerprint["failed"])
    plan = plan_experiment(fingerprint, labels, target_spacing=target_spacing, patch_size=patch_size,
                           patch_budget_voxels=patch_budget_voxels, base_features=base_features,
                           max_features=max_features, max_stages=max_stages, batch_size=batch_size,
                           normalization=normalization, clip_window=clip_window, dataset=layout,
                           image_budget_voxels=image_budget_voxels)
    if tasks is not None:
        plan["tasks"] = {str(k): v for k, v in tasks.items()}
        plan["task_channels"] = task_channels
    # Fail on too few cases for the folds before the long preprocessing run (naming broken cases first).
    if len(plan["cases"]) < num_folds:
        raise_for_failures(failures, "fingerprint")
    make_splits(plan["cases"], num_folds)

    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create output folder {out_dir}: {err}") from None
    todo = [c for c in cases if c.case_id in set(plan["cases"])]
    done, failed_now = map_cases(preprocess_case, todo, (plan, str(out_dir)), workers, progress, "preprocess")
    failures.update(failed_now)

    plan["cases"] = sorted(done)
    if plan["cases"]:
        atomic_write_json(out_dir / "plans.json", plan)
        if len(plan["cases"]) >= num_folds:
            atomic_write_json(out_dir / "splits.json", make_splits(plan["cases"], num_folds))
    raise_for_failures(failures, "preprocessing")
    return plan

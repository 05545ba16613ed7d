"""Preprocessing: crop to nonzero, CT normalization, resampling to the target spacing, on-disk cases.

One code path (``_crop_normalize_resample``) serves training cases (with label) and inference images
(``predict.py``), and owns the two size rules: an axis thinner than half a target voxel becomes one voxel
(``resample.compute_new_shape``), and resampling whose estimated peak memory exceeds what the machine has
(physical memory or the cgroup limit) is refused with one line naming the file, the shapes and the GiB,
before anything is allocated.

``preprocess_dataset`` writes the folder so that a run killed at any instant leaves the old folder, the
new one, or one every reader refuses (the order and the checks: ``src.data.preprocessed``). It works from
one case: the folds are as many as the cases allow (``planning.fold_count``; none for one case, which
then trains with ``--fold all``), and its worker processes are capped at the CPUs the process may use.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np


from src.cpu_env import cap_workers, memory_limit_bytes
from src.data.fingerprint import (FOREGROUND_POOL_SIZE, compute_fingerprint, crop_to_nonzero, map_cases,
                                  raise_for_failures)
from src.data.io import ImageMeta, load_image, load_label
from src.data.layouts import CaseFiles, dataset_labels, dataset_tasks, detect_layout, find_cases
from src.data.partial_labels import mots_task_channels
from src.data.planning import cross_validation_splits, fold_count, plan_experiment
from src.data.plan import PLAN_FILE, Plan
from src.data.resample import (compute_new_shape, estimate_resampling_bytes, needs_separate_z, resample_image,
                               resample_segmentation)
from src.data.preprocessed_case import PLAN_ID_MEMBER, plan_id_array
from src.errors import UserError
from src.files import atomic_write, atomic_write_json, check_output_dir, read_json_if_valid, remove_stale_temporaries

MAX_FOREGROUND_COORDS = 10_000
FOREGROUND_COORD_SEED = 1234


def normalize_intensity(data: np.ndarray, plan: Plan) -> np.ndarray:
    """CT normalization of (C, ...) data as the plan says; returns a new float32 array."""
    data = np.asarray(data, dtype=np.float32)
    if plan.normalization == "ct":
        stats = plan.intensity
        data = np.clip(data, stats["p005"], stats["p995"])
        data -= np.float32(stats["mean"])
        data /= np.float32(max(stats["std"], 1e-8))
        return data
    if plan.normalization == "ct_clip_scale":
        low, high = plan.clip_window
        data = np.clip(data, low, high)
        data /= np.float32(max(abs(low), abs(high)))
        return data
    raise UserError(f"unknown normalization {plan.normalization!r} in plans.json")


GIB = 2 ** 30


def check_resampling_memory(shape_after_crop, new_shape, channels: int, with_seg: bool, source) -> None:
    """UserError when resampling ``shape_after_crop`` to ``new_shape`` would need more memory than this
    machine has (``cpu_env.memory_limit_bytes``): one line instead of a MemoryError, or a swapping machine."""
    needed = estimate_resampling_bytes(shape_after_crop, new_shape, channels, with_seg)
    limit = memory_limit_bytes()
    if limit is not None and needed > limit:
        raise UserError(f"{source}: resampling {list(shape_after_crop)} voxels to {list(new_shape)} needs about "
                        f"{needed / GIB:.1f} GiB, more than the {limit / GIB:.1f} GiB this machine has; check the "
                        "file's spacing or choose a coarser target_spacing")


def _crop_normalize_resample(image: np.ndarray, seg: np.ndarray | None, spacing, plan: Plan, source="image"):
    """(data (1, ...) float32, seg int8 or None, properties) at the plan's target spacing.

    nnU-Net v2 order: crop, normalize, then resample. ``source`` names the file in errors.
    """
    spacing = [float(s) for s in spacing]
    target = plan.target_spacing
    data, seg, bbox = crop_to_nonzero(image[None].astype(np.float32, copy=False), seg)
    shape_after_crop = list(data.shape[1:])
    new_shape = tuple(int(s) for s in compute_new_shape(shape_after_crop, spacing, target))
    if new_shape != tuple(shape_after_crop):
        check_resampling_memory(shape_after_crop, new_shape, data.shape[0], seg is not None, source)
    data = normalize_intensity(data, plan)
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


def preprocess_image_for_inference(image: np.ndarray, meta: ImageMeta, plan: Plan):
    """(data (1, ...) float32, properties) for an unlabelled image, as preprocess_case would do it."""
    data, _, properties = _crop_normalize_resample(image, None, meta.spacing, plan, meta.source)
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


def preprocess_case(case: CaseFiles, plan: Plan, out_dir) -> dict:
    """Write ``<case>.json`` then ``<case>.npz`` (data, seg, fg_<label>, plan_id); returns the case properties.

    The json goes first: a run killed between the two leaves a json of the new plan next to an npz of the
    old one, which ``load_plan`` refuses; the other order could pair an old json with a new npz.
    """
    if case.label is None:
        raise UserError(f"case {case.case_id}: no label file next to {case.image}")
    image, meta = load_image(case.image)
    seg = load_label(case.label, like=meta)
    if seg.max() > np.iinfo(np.int8).max:
        raise UserError(f"case {case.case_id}: label values above {np.iinfo(np.int8).max} are not supported")
    data, seg, properties = _crop_normalize_resample(image, seg, meta.spacing, plan, case.image)
    foreground_values = [v for v in plan.labels.values() if v > 0]
    coords = sample_foreground_coords(seg, foreground_values)
    identity = plan.identity
    arrays = {"data": data, "seg": seg, PLAN_ID_MEMBER: plan_id_array(identity)}
    arrays.update({f"fg_{value}": c for value, c in coords.items()})
    out_dir = Path(out_dir)
    case_json = {
        "case_id": case.case_id,
        "task_id": case.task_id,
        "plan_id": identity,
        "image_meta": meta.to_json(),
        **properties,
        "labels_present": [value for value, c in coords.items() if len(c)],
    }
    atomic_write_json(out_dir / f"{case.case_id}.json", case_json)
    atomic_write(out_dir / f"{case.case_id}.npz", lambda handle: np.savez(handle, **arrays))
    return case_json


def _is_case_json(path: Path) -> bool:
    """A ``<case>.json`` that preprocessing wrote (so its pair may be deleted), not another JSON file."""
    content = read_json_if_valid(path)
    return isinstance(content, dict) and content.get("case_id") == path.stem and "shape_after_crop" in content


def remove_cases_not_in(out_dir: Path, keep) -> list[str]:
    """Delete ``<case>.json``/``<case>.npz`` pairs of cases the committed plan does not list (an earlier
    run's, or cases that failed this time); returns their ids. Other files are left alone."""
    keep = set(keep)
    removed = []
    for path in sorted(out_dir.glob("*.json")):
        if path.stem in keep or path.name in (PLAN_FILE, "splits.json") or not _is_case_json(path):
            continue
        path.with_suffix(".npz").unlink(missing_ok=True)
        path.unlink(missing_ok=True)
        removed.append(path.stem)
    return removed


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
                       image_budget_voxels=None, base_features=32, max_features=320, max_stages=None, batch_size=2,
                       normalization="ct", clip_window=None, num_folds=5, workers=2, progress=True,
                       foreground_pool_size=FOREGROUND_POOL_SIZE) -> Plan:
    """Fingerprint, plan and preprocess a labelled dataset into ``out_dir``; returns the plan.

    Writes per case <case>.json + <case>.npz, then splits.json, then plans.json (the commit point), then
    deletes the files of cases the plan does not list (``src.data.preprocessed`` says why). Broken cases
    are reported and skipped while the others finish; a UserError listing them is raised at the end.
    """
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    layout = detect_layout(raw_dir)
    cases = _labelled_cases(raw_dir, layout)
    fold_count(len(cases), num_folds)  # a bad num_folds: say so before any work
    workers = cap_workers(workers, "preprocessing (--workers)")
    labels = dataset_labels(raw_dir)
    tasks = dataset_tasks(raw_dir)
    # DoDNet's per-task (organ, tumour) label values, checked before the long fingerprinting run
    task_channels = mots_task_channels(raw_dir, tasks) if tasks is not None else None
    check_output_dir(out_dir, "preprocessed output folder")
    remove_stale_temporaries(out_dir)  # files of killed runs, never renamed into place
    fingerprint = compute_fingerprint(cases, workers, pool_size=foreground_pool_size, progress=progress,
                                      collect_failures=True, label_values=list(labels.values()))
    failures = dict(fingerprint["failed"])
    plan = plan_experiment(fingerprint, labels, target_spacing=target_spacing, patch_size=patch_size,
                           patch_budget_voxels=patch_budget_voxels, base_features=base_features,
                           max_features=max_features, max_stages=max_stages, batch_size=batch_size,
                           normalization=normalization, clip_window=clip_window, dataset=layout,
                           image_budget_voxels=image_budget_voxels)
    if tasks is not None:
        plan = plan.replace(tasks={str(k): v for k, v in tasks.items()}, task_channels=task_channels)

    todo = [c for c in cases if c.case_id in set(plan.cases)]
    done, failed_now = map_cases(preprocess_case, todo, (plan, str(out_dir)), workers, progress, "preprocess")
    failures.update(failed_now)

    plan = plan.replace(cases=sorted(done))
    if plan.cases:
        splits = cross_validation_splits(plan.cases, num_folds)
        plan = plan.replace(num_folds=len(splits))
        _note_fold_count(len(plan.cases), num_folds, len(splits))
        atomic_write_json(out_dir / "splits.json", splits)
        plan.write(out_dir / PLAN_FILE)
        remove_cases_not_in(out_dir, plan.cases)
    raise_for_failures(failures, "preprocessing")
    return plan


def _note_fold_count(num_cases: int, requested: int, made: int) -> None:
    if made == requested:
        return
    if made == 0:
        print(f"note: {num_cases} case: no cross-validation folds (splits.json is empty); train with --fold all",
              file=sys.stderr)
    else:
        print(f"note: {num_cases} cases: {made}-fold cross-validation instead of {requested}-fold", file=sys.stderr)

"""Experiment planning (nnU-Net rules): target spacing, patch size, U-Net topology, cross-validation splits."""
from __future__ import annotations

import numpy as np

from src.data.resample import ANISOTROPY_THRESHOLD, compute_new_shape, needs_separate_z
from src.config import NORMALIZATIONS
from src.data.plan import Plan
from src.errors import UserError

# nnU-Net's smallest feature-map edge: an axis pools while its map is >= 2x this (3x if it pools alone).
MIN_FEATURE_MAP_EDGE = 4
INITIAL_PATCH_VOXELS = 256 ** 3
# nnU-Net's 3d_lowres rule: spacing grows by 3% a step, axes finer than half the coarsest one first.
SPACING_GROWTH = 1.03
LOWRES_MAX_AXIS_RATIO = 2.0
SPLIT_SEED = 12345


def plan_target_spacing(spacings, shapes_after_crop, threshold: float = ANISOTROPY_THRESHOLD) -> list[float]:
    """Per-axis median spacing, with nnU-Net's override for strongly anisotropic data.

    When the coarsest axis is > ``threshold`` x the other spacings and has < 1/threshold of their voxels,
    it takes the 10th percentile of its spacings (at least the largest other spacing + 1e-5), so that the
    in-plane resolution is not thrown away to match thick slices.
    """
    spacings = np.asarray(spacings, dtype=np.float64)
    sizes = np.asarray(shapes_after_crop, dtype=np.float64)
    target = np.percentile(spacings, 50, axis=0)
    median_size = np.percentile(sizes, 50, axis=0)
    worst = int(np.argmax(target))
    others = [a for a in range(3) if a != worst]
    max_other_spacing = max(target[a] for a in others)
    anisotropic_spacing = target[worst] > threshold * max_other_spacing
    anisotropic_voxels = median_size[worst] * threshold < min(median_size[a] for a in others)
    if anisotropic_spacing and anisotropic_voxels:
        worst_axis_spacing = float(np.percentile(spacings[:, worst], 10))
        if worst_axis_spacing < max_other_spacing:
            worst_axis_spacing = max_other_spacing + 1e-5
        target[worst] = worst_axis_spacing
    return [float(s) for s in target]


def _pad_to_multiple(shape, divisors) -> list[int]:
    return [int(-(-int(s) // d) * d) for s, d in zip(shape, divisors)]


def pool_and_conv_props(spacing, patch_size, max_pools: int | None = None):
    """Topology for a patch at a spacing: (strides, conv_kernel_sizes, padded patch, divisible_by).

    strides[0] is [1, 1, 1]; stage i downsamples by strides[i]. An axis pools while its feature map is
    >= 8 voxels and its spacing is < 2x the finest spacing among the axes that may still pool; an axis
    pooling alone needs >= 12. Kernels are 1 along an axis until its spacing is within 2x of the finest.
    """
    current_spacing = [float(s) for s in spacing]
    current_size = [int(s) for s in patch_size]
    strides = [[1, 1, 1]]
    kernels = []
    pools_per_axis = [0, 0, 0]
    kernel = [1, 1, 1]
    while max_pools is None or len(strides) - 1 < max_pools:
        candidates = [a for a in range(3) if current_size[a] >= 2 * MIN_FEATURE_MAP_EDGE]
        if not candidates:
            break
        finest = min(current_spacing[a] for a in candidates)
        candidates = [a for a in candidates if current_spacing[a] / finest < 2]
        if len(candidates) == 1 and current_size[candidates[0]] < 3 * MIN_FEATURE_MAP_EDGE:
            break
        finest_overall = min(current_spacing)
        kernel = [3 if kernel[a] == 3 or current_spacing[a] / finest_overall < 2 else 1 for a in range(3)]
        stride = [1, 1, 1]
        for a in candidates:
            stride[a] = 2
            pools_per_axis[a] += 1
            current_spacing[a] *= 2
            current_size[a] = int(np.ceil(current_size[a] / 2))
        strides.append(stride)
        kernels.append(list(kernel))
    # The bottleneck (lowest stage) always uses 3x3x3, as in nnU-Net.
    kernels.append([3, 3, 3])
    divisible_by = [2 ** p for p in pools_per_axis]
    return strides, kernels, _pad_to_multiple(patch_size, divisible_by), divisible_by


def coarsen_spacing(spacing, median_shape, budget_voxels: int) -> list[float]:
    """nnU-Net's 3d_lowres spacing: grow ``spacing`` until the median image (``median_shape`` voxels at
    ``spacing``) holds at most ``budget_voxels``. Each step multiplies by 1.03 the axes more than 2x finer
    than the coarsest one, or all axes once none is, so the voxels get more isotropic before they grow.
    The budget bounds the voxels of every later stage (preprocessing, training data, sliding windows)
    for whatever data comes in, which a fixed spacing cannot."""
    if budget_voxels < 1:
        raise UserError(f"image_budget_voxels must be at least 1, got {budget_voxels}")
    start = np.asarray(spacing, dtype=np.float64)
    extent = start * np.asarray(median_shape, dtype=np.float64)  # millimetres, unchanged by resampling
    current = start.copy()
    while np.prod(extent / current) > budget_voxels:
        too_fine = current.max() / current > LOWRES_MAX_AXIS_RATIO
        current = np.where(too_fine, current * SPACING_GROWTH, current) if too_fine.any() else current * SPACING_GROWTH
    return [float(s) for s in current]


def initial_patch_size(spacing, median_shape) -> list[int]:
    """A patch with aspect ~ 1/spacing holding 256^3 voxels, clipped to the median image shape."""
    inverse = 1.0 / np.asarray(spacing, dtype=np.float64)
    patch = [round(v) for v in inverse * (INITIAL_PATCH_VOXELS / np.prod(inverse)) ** (1 / 3)]
    return [int(min(p, m)) for p, m in zip(patch, median_shape)]


def plan_patch_size(spacing, median_shape, budget_voxels: int, max_pools: int | None = None) -> list[int]:
    """nnU-Net's shrinking: cut the axis largest relative to the median shape until the patch fits."""
    median_shape = [max(1, int(m)) for m in median_shape]
    _, _, patch, divisible_by = pool_and_conv_props(spacing, initial_patch_size(spacing, median_shape), max_pools)
    while int(np.prod(patch)) > budget_voxels:
        axis = int(np.argsort([p / m for p, m in zip(patch, median_shape)])[-1])
        trial = list(patch)
        trial[axis] -= divisible_by[axis]
        if trial[axis] < 1:
            break
        _, _, _, trial_divisible_by = pool_and_conv_props(spacing, trial, max_pools)
        patch[axis] -= trial_divisible_by[axis]
        _, _, patch, divisible_by = pool_and_conv_props(spacing, patch, max_pools)
    return patch


def stage_features(num_stages: int, base_features: int = 32, max_features: int = 320) -> list[int]:
    return [int(min(base_features * 2 ** i, max_features)) for i in range(num_stages)]


def _check_triplet(name: str, values, kind):
    if values is None:
        return None
    values = list(values)
    if len(values) != 3 or not all(v > 0 for v in values):
        raise UserError(f"{name} must be 3 positive numbers, got {values}")
    return [kind(v) for v in values]


def plan_experiment(fingerprint: dict, labels: dict, target_spacing=None, patch_size=None,
                    patch_budget_voxels: int = 128 ** 3, base_features: int = 32, max_features: int = 320,
                    max_stages: int | None = None, batch_size: int = 2, normalization: str = "ct", *,
                    clip_window=None, dataset: str = "unknown", image_budget_voxels: int | None = None) -> Plan:
    """plans.json content from a fingerprint (see compute_fingerprint) and the dataset's labels.

    Without ``target_spacing`` the spacing is planned: the median rule, then coarsened until the median
    resampled image fits ``image_budget_voxels`` if that is given (``coarsen_spacing``)."""
    if normalization not in NORMALIZATIONS:
        raise UserError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    if normalization == "ct_clip_scale":
        if clip_window is None or len(clip_window) != 2 or not clip_window[0] < clip_window[1]:
            raise UserError(f"ct_clip_scale needs clip_window [low, high] with low < high, got {clip_window}")
    if max_stages is not None and max_stages < 1:
        raise UserError(f"max_stages must be at least 1, got {max_stages}")
    if batch_size < 1:
        raise UserError(f"batch_size must be at least 1, got {batch_size}")
    target_spacing = _check_triplet("target_spacing", target_spacing, float)
    patch_size = _check_triplet("patch_size", patch_size, int)

    spacings, shapes = fingerprint["spacings"], fingerprint["shapes_after_crop"]
    def median_shape_at(spacing):
        resampled = [compute_new_shape(shape, s, spacing) for shape, s in zip(shapes, spacings)]
        return [int(round(v)) for v in np.median(np.asarray(resampled, dtype=np.float64), axis=0)]

    spacing_rule = "given"
    if target_spacing is None:
        target_spacing, spacing_rule = plan_target_spacing(spacings, shapes), "median"
        if image_budget_voxels is not None:
            coarser = coarsen_spacing(target_spacing, median_shape_at(target_spacing), image_budget_voxels)
            if coarser != target_spacing:
                target_spacing, spacing_rule = coarser, f"median, coarsened to {image_budget_voxels} voxels"
    median_shape = median_shape_at(target_spacing)
    median_spacing = [float(v) for v in np.median(np.asarray(spacings, dtype=np.float64), axis=0)]

    max_pools = None if max_stages is None else max_stages - 1
    if patch_size is None:
        patch_size = plan_patch_size(target_spacing, median_shape, patch_budget_voxels, max_pools)
    strides, kernels, patch_size, _ = pool_and_conv_props(target_spacing, patch_size, max_pools)
    separate_axis = needs_separate_z(median_spacing, target_spacing)

    labels = dict(sorted(((str(k), int(v)) for k, v in labels.items()), key=lambda item: item[1]))
    if sorted(labels.values()) != list(range(len(labels))):
        raise UserError(f"label values must be 0..{len(labels) - 1} without gaps, got {labels}")
    intensity = {k: float(fingerprint["intensity"][k]) for k in ("mean", "std", "p005", "p995")}
    return Plan({
        "dataset": dataset,
        "labels": labels,
        "num_classes": len(labels),
        "num_channels": 1,
        "normalization": normalization,
        "clip_window": [float(v) for v in clip_window] if normalization == "ct_clip_scale" else None,
        "intensity": intensity,
        "target_spacing": [float(s) for s in target_spacing],
        "target_spacing_rule": spacing_rule,
        "median_spacing": median_spacing,
        "median_shape": median_shape,
        "patch_size": [int(p) for p in patch_size],
        "batch_size": int(batch_size),
        "conv_kernel_sizes": kernels,
        "strides": strides,
        "features": stage_features(len(strides), base_features, max_features),
        "separate_z": separate_axis is not None,
        "anisotropy_axis": None if separate_axis is None else int(separate_axis),
        "cases": list(fingerprint["case_ids"]),
    })


def plan_for_config(plan: Plan, target_spacing=None, patch_size=None, base_features: int = 32,
                    max_features: int = 320, max_stages: int | None = None) -> Plan:
    """The plan with the network topology the config asks for at training time.

    The target spacing is baked into the preprocessed data, so a different one is an error; the patch
    size (``None`` keeps the planned one), the widths and the stage limit may change after
    preprocessing, and the per-stage kernels/strides are re-derived with the same rule as planning.
    For the config the data was preprocessed with, the plan comes back unchanged.
    """
    if target_spacing is not None and not np.allclose(target_spacing, plan.target_spacing, rtol=1e-4):
        raise UserError(f"target_spacing {list(target_spacing)} differs from the preprocessed data's "
                        f"{plan.target_spacing}: run prepare.py preprocess again with this config")
    patch = _check_triplet("patch_size", patch_size, int) or plan.patch_size
    if max_stages is not None and max_stages < 1:
        raise UserError(f"max_stages must be at least 1, got {max_stages}")
    max_pools = None if max_stages is None else max_stages - 1
    strides, kernels, patch, _ = pool_and_conv_props(plan.target_spacing, patch, max_pools)
    return plan.replace(patch_size=[int(p) for p in patch], strides=strides, conv_kernel_sizes=kernels,
                        features=stage_features(len(strides), base_features, max_features))


def kfold_indices(num_items: int, num_folds: int, seed: int = SPLIT_SEED) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, val) index arrays exactly as sklearn's KFold(num_folds, shuffle=True, random_state=seed)."""
    order = np.random.RandomState(seed).permutation(num_items)
    fold_sizes = np.full(num_folds, num_items // num_folds, dtype=int)
    fold_sizes[: num_items % num_folds] += 1
    folds, start = [], 0
    for size in fold_sizes:
        is_val = np.zeros(num_items, dtype=bool)
        is_val[order[start:start + size]] = True
        folds.append((np.flatnonzero(~is_val), np.flatnonzero(is_val)))
        start += size
    return folds


def make_splits(case_ids, num_folds: int = 5, seed: int = SPLIT_SEED) -> list[dict]:
    """nnU-Net's cross-validation splits over the sorted case ids: [{"train": [...], "val": [...]}]."""
    ids = sorted(case_ids)
    if num_folds < 2:
        raise UserError(f"num_folds must be at least 2, got {num_folds}")
    if len(ids) < num_folds:
        raise UserError(f"{num_folds}-fold cross-validation needs at least {num_folds} cases, got {len(ids)}")
    return [{"train": [ids[i] for i in train], "val": [ids[i] for i in val]}
            for train, val in kfold_indices(len(ids), num_folds, seed)]


def fold_count(num_cases: int, num_folds: int) -> int:
    """Folds the cases allow: ``num_folds`` (nnU-Net: 5), fewer with fewer cases (leave-one-out), and none
    for a single case, which cannot be both trained on and held out."""
    if num_folds < 2:
        raise UserError(f"num_folds must be at least 2, got {num_folds}")
    return min(num_folds, num_cases) if num_cases >= 2 else 0


def cross_validation_splits(case_ids, num_folds: int = 5, seed: int = SPLIT_SEED) -> list[dict]:
    """``make_splits`` with as many folds as the cases allow (``fold_count``); ``[]`` for one case."""
    folds = fold_count(len(case_ids), num_folds)
    return make_splits(case_ids, folds, seed) if folds else []

import numpy as np
import pytest

from src.data.planning import (coarsen_spacing, initial_patch_size, make_splits, plan_experiment, plan_patch_size,
                               plan_target_spacing, pool_and_conv_props, stage_features)
from src.data.plan import Plan
from src.errors import UserError

KITS_LABELS = {"background": 0, "kidney": 1, "tumor": 2}
INTENSITY = {"mean": 100.0, "std": 50.0, "p005": -50.0, "p995": 300.0, "median": 100.0, "min": -80.0,
             "max": 400.0}


def fingerprint(spacings, shapes):
    return {"case_ids": [f"case_{i:05d}" for i in range(len(spacings))], "spacings": spacings,
            "shapes_after_crop": shapes, "intensity": INTENSITY}


def kits19_like_fingerprint():
    # 10 cases: slice spacing median 3.0 (10th percentile 0.5), in-plane 0.78125, ~100 x 512 x 512 voxels
    z = [0.5, 0.5, 1.0, 2.5, 3.0, 3.0, 3.0, 5.0, 5.0, 5.0]
    spacings = [[s, 0.78125, 0.78125] for s in z]
    shapes = [[int(300 / s), 512, 512] for s in z]
    return fingerprint(spacings, shapes)


def test_kits19_target_spacing_uses_anisotropy_override():
    fp = kits19_like_fingerprint()
    assert np.median(np.array(fp["spacings"])[:, 0]) == 3.0
    target = plan_target_spacing(fp["spacings"], fp["shapes_after_crop"])
    # the 10th percentile (0.5) is finer than in-plane, so the slice axis takes in-plane + 1e-5
    assert target == pytest.approx([0.78125, 0.78125, 0.78125], abs=2e-5)
    assert target[0] > 0.78125


def test_target_spacing_override_takes_tenth_percentile_when_coarser_than_in_plane():
    spacings = [[s, 0.7, 0.7] for s in (2.5, 2.5, 4.0, 4.0, 4.0, 5.0, 5.0, 5.0, 5.0, 5.0)]
    shapes = [[60, 512, 512]] * 10
    assert plan_target_spacing(spacings, shapes) == pytest.approx([2.5, 0.7, 0.7])


def test_target_spacing_is_the_median_without_anisotropy():
    spacings = [[1.0, 0.8, 0.8], [2.0, 0.7, 0.7], [1.5, 0.9, 0.9]]
    assert plan_target_spacing(spacings, [[200, 512, 512]] * 3) == pytest.approx([1.5, 0.8, 0.8])
    # anisotropic spacing but many slices: no override (both conditions are needed)
    thick = [[3.0, 0.78, 0.78]] * 3
    assert plan_target_spacing(thick, [[400, 512, 512]] * 3) == pytest.approx([3.0, 0.78, 0.78])


def test_coarsened_spacing_grows_fine_axes_first_then_all():
    # in-plane 4x finer than the slices: a budget reached on the way grows in-plane only
    first = coarsen_spacing([4.0, 1.0, 1.0], [50, 400, 400], budget_voxels=50 * 250 * 250)
    assert first[0] == 4.0 and first[1] == first[2] and 1.6 <= first[1] < 1.6 * 1.03
    # a smaller budget: in-plane grows until it is no more than 2x finer, then every axis by the same factor
    second = coarsen_spacing([4.0, 1.0, 1.0], [50, 400, 400], budget_voxels=50 * 50 * 50)
    assert second[0] > 4.0 and second[1] == second[2]
    assert second[0] / second[1] == pytest.approx(4.0 / 1.03 ** 24, rel=1e-9)  # 1.03^24 is the first <= 2x
    # grown step by step, so it lands within one 3% step of the budget
    voxels = np.prod(np.array([4.0 * 50, 400.0, 400.0]) / np.array(second))
    assert 50 ** 3 / 1.03 ** 3 < voxels <= 50 ** 3


def test_coarsened_spacing_leaves_a_small_dataset_alone():
    assert coarsen_spacing([2.0, 1.0, 1.0], [10, 20, 20], budget_voxels=10 ** 6) == [2.0, 1.0, 1.0]
    with pytest.raises(UserError, match="image_budget_voxels"):
        coarsen_spacing([2.0, 1.0, 1.0], [10, 20, 20], budget_voxels=0)


def test_image_budget_plans_the_spacing_only_when_none_is_given():
    fp = fingerprint([[2.5, 0.8, 0.8], [2.0, 1.0, 1.0], [3.0, 0.9, 0.9]], [[100, 300, 300]] * 3)
    free = plan_experiment(fp, KITS_LABELS, patch_budget_voxels=32 ** 3)
    budget = np.prod(free.get("median_shape")) // 10
    bounded = plan_experiment(fp, KITS_LABELS, patch_budget_voxels=32 ** 3, image_budget_voxels=int(budget))
    assert free.get("target_spacing_rule") == "median" and bounded.get("target_spacing_rule").startswith("median, coarsened")
    assert all(b > f for b, f in zip(bounded.target_spacing, free.target_spacing))
    # the median image of the bounded plan fits the budget (rounding of each case's shape aside)
    assert np.prod(bounded.get("median_shape")) <= budget * 1.05
    given = plan_experiment(fp, KITS_LABELS, target_spacing=[2.5, 0.9, 0.9], image_budget_voxels=int(budget))
    assert given.target_spacing == [2.5, 0.9, 0.9] and given.get("target_spacing_rule") == "given"


def test_five_stage_isotropic_topology_for_64_cubed():
    strides, kernels, patch, divisible_by = pool_and_conv_props([1.0, 1.0, 1.0], [64, 64, 64])
    assert strides == [[1, 1, 1]] + [[2, 2, 2]] * 4
    assert kernels == [[3, 3, 3]] * 5
    assert patch == [64, 64, 64] and divisible_by == [16, 16, 16]
    plan = plan_experiment(fingerprint([[1.0, 1.0, 1.0]] * 2, [[64, 64, 64]] * 2), KITS_LABELS,
                           patch_size=[64, 64, 64])
    assert plan.features == [32, 64, 128, 256, 320]
    assert plan.strides == strides and plan.conv_kernel_sizes == kernels
    assert plan.patch_size == [64, 64, 64]


def test_bdci_fixed_spacing_and_patch_topology():
    plan = plan_experiment(kits19_like_fingerprint(), KITS_LABELS, target_spacing=[3.22, 1.62, 1.62],
                           patch_size=[80, 160, 160])
    assert plan.target_spacing == [3.22, 1.62, 1.62]
    assert plan.patch_size == [80, 160, 160]
    # 3.22 / 1.62 < 2: all axes pool together until the slice axis' map (5) is too small
    assert plan.strides == [[1, 1, 1]] + [[2, 2, 2]] * 4 + [[1, 2, 2]]
    assert plan.conv_kernel_sizes == [[3, 3, 3]] * 6
    assert plan.features == [32, 64, 128, 256, 320, 320]
    assert plan.get("median_shape") == [int(round(300 / 3.22)), int(round(512 * 0.78125 / 1.62)),
                                    int(round(512 * 0.78125 / 1.62))]


def test_anisotropic_spacing_gets_in_plane_first_stage():
    strides, kernels, patch, _ = pool_and_conv_props([3.0, 0.78, 0.78], [40, 192, 160])
    assert strides[:3] == [[1, 1, 1], [1, 2, 2], [2, 2, 2]]
    assert kernels[0] == [1, 3, 3] and kernels[1] == [3, 3, 3]
    assert patch == [40, 192, 160]
    # an axis pooling alone needs a 12-voxel map: after one joint pool only the last axis (12) goes on
    strides, _, _, _ = pool_and_conv_props([1.0, 1.0, 1.0], [8, 8, 24])
    assert strides == [[1, 1, 1], [2, 2, 2], [1, 1, 2]]


def test_config_patch_is_made_pool_compatible():
    plan = plan_experiment(fingerprint([[1.0, 1.0, 1.0]] * 2, [[100, 100, 100]] * 2), KITS_LABELS,
                           patch_size=[30, 50, 70])
    pools = np.log2(np.prod(np.array(plan.strides), axis=0)).astype(int)
    for size, given, n in zip(plan.patch_size, [30, 50, 70], pools):
        assert size >= given and size % 2 ** n == 0 and size - given < 2 ** n
    assert plan.patch_size == [32, 56, 72]


def test_planned_patch_shrinks_largest_relative_axis_first():
    # hand-worked nnU-Net shrinking from 64^3 to a 131072-voxel budget
    assert plan_patch_size([1.0, 1.0, 1.0], [64, 64, 64], 131072) == [56, 48, 48]
    assert plan_patch_size([1.0, 1.0, 1.0], [64, 64, 64], 10 ** 9) == [64, 64, 64]
    # never larger than the median shape rounded up to a pool-compatible size
    assert plan_patch_size([1.0, 1.0, 1.0], [40, 70, 300], 10 ** 9)[:2] == [40, 80]


def test_initial_patch_follows_inverse_spacing():
    patch = initial_patch_size([2.0, 1.0, 1.0], [1000, 1000, 1000])
    assert patch[1] == patch[2] and abs(patch[1] / patch[0] - 2) < 0.02
    assert abs(np.prod(patch) / 256 ** 3 - 1) < 0.02


@pytest.mark.parametrize("budget", [32 ** 3, 64 * 64 * 48, 128 ** 3])
def test_planned_patch_fits_budget_and_is_pool_compatible(budget):
    fp = kits19_like_fingerprint()
    plan = plan_experiment(fp, KITS_LABELS, target_spacing=[3.22, 1.62, 1.62], patch_budget_voxels=budget)
    patch = plan.patch_size
    assert np.prod(patch) <= budget
    pools = np.log2(np.prod(np.array(plan.strides), axis=0)).astype(int)
    assert all(p % 2 ** n == 0 for p, n in zip(patch, pools))
    assert len(plan.features) == len(plan.strides) == len(plan.conv_kernel_sizes)
    median = plan.get("median_shape")
    assert all(p <= -(-m // 2 ** n) * 2 ** n for p, m, n in zip(patch, median, pools))


def test_max_stages_caps_the_depth():
    plan = plan_experiment(fingerprint([[1.0, 1.0, 1.0]] * 2, [[64, 64, 64]] * 2), KITS_LABELS,
                           patch_size=[64, 64, 64], max_stages=3, base_features=16, max_features=48)
    assert plan.strides == [[1, 1, 1], [2, 2, 2], [2, 2, 2]]
    assert plan.features == [16, 32, 48]
    assert stage_features(6) == [32, 64, 128, 256, 320, 320]


def test_plan_contents():
    plan = plan_experiment(kits19_like_fingerprint(), KITS_LABELS, patch_budget_voxels=64 ** 3, batch_size=3,
                           dataset="kits19")
    assert plan.get("dataset") == "kits19" and plan.num_classes == 3 and plan.num_channels == 1
    assert plan.labels == KITS_LABELS and plan.get("batch_size") == 3
    assert plan.intensity == {k: INTENSITY[k] for k in ("mean", "std", "p005", "p995")}
    assert plan.normalization == "ct" and plan.clip_window is None
    # the median case is resampled from 3 mm slices to ~0.78 mm: separate z along axis 0
    assert plan.get("separate_z") is True and plan.get("anisotropy_axis") == 0
    assert plan.cases == [f"case_{i:05d}" for i in range(10)]
    iso = plan_experiment(fingerprint([[1.0, 1.0, 1.0]] * 2, [[64, 64, 64]] * 2), KITS_LABELS,
                          normalization="ct_clip_scale", clip_window=[-325, 325])
    assert iso.get("separate_z") is False and iso.get("anisotropy_axis") is None
    assert iso.clip_window == [-325.0, 325.0]


def test_plan_rejects_bad_arguments():
    fp = fingerprint([[1.0, 1.0, 1.0]] * 2, [[64, 64, 64]] * 2)
    with pytest.raises(UserError, match="normalization"):
        plan_experiment(fp, KITS_LABELS, normalization="mri")
    with pytest.raises(UserError, match="clip_window"):
        plan_experiment(fp, KITS_LABELS, normalization="ct_clip_scale")
    with pytest.raises(UserError, match="label values"):
        plan_experiment(fp, {"background": 0, "tumor": 2})
    with pytest.raises(UserError, match="patch_size"):
        plan_experiment(fp, KITS_LABELS, patch_size=[64, 64])
    with pytest.raises(UserError, match="target_spacing"):
        plan_experiment(fp, KITS_LABELS, target_spacing=[1.0, 0.0, 1.0])


def test_splits_match_sklearn_kfold_shuffle_12345():
    ids = [f"case_{i:05d}" for i in range(12)]
    splits = make_splits(list(reversed(ids)))  # input order does not matter: ids are sorted first
    # validation indices of sklearn 1.9.1 KFold(5, shuffle=True, random_state=12345).split(range(12))
    expected_val = [[0, 3, 8], [7, 10, 11], [6, 9], [1, 4], [2, 5]]
    assert [s["val"] for s in splits] == [[ids[i] for i in fold] for fold in expected_val]
    for split in splits:
        assert sorted(split["train"] + split["val"]) == ids
        assert not set(split["train"]) & set(split["val"])
    assert sorted(sum((s["val"] for s in splits), [])) == ids
    assert make_splits(ids, 3, seed=1) != make_splits(ids, 3)


def test_splits_need_enough_cases():
    with pytest.raises(UserError, match="at least 5 cases"):
        make_splits(["a", "b", "c"], 5)
    with pytest.raises(UserError, match="num_folds"):
        make_splits(["a", "b", "c"], 1)


@pytest.mark.parametrize("count, folds", [(1, 0), (2, 2), (3, 3), (4, 4), (5, 5), (12, 5)])
def test_cross_validation_has_as_many_folds_as_the_cases_allow(count, folds):
    from src.data.planning import cross_validation_splits, fold_count

    ids = [f"case_{i:05d}" for i in range(count)]
    assert fold_count(count, 5) == folds
    splits = cross_validation_splits(ids, 5)
    assert len(splits) == folds
    if folds:
        assert splits == make_splits(ids, folds)
        assert sorted(sum((s["val"] for s in splits), [])) == ids and all(s["train"] and s["val"] for s in splits)
    with pytest.raises(UserError, match="num_folds must be at least 2"):
        fold_count(count, 1)


def test_plan_for_config_is_identity_for_the_preprocessing_config():
    from src.data.planning import plan_for_config, pool_and_conv_props, stage_features

    strides, kernels, patch, _ = pool_and_conv_props([4.0, 3.2, 3.2], [32, 64, 64])
    plan = Plan.from_json({"target_spacing": [4.0, 3.2, 3.2], "num_classes": 3, "patch_size": patch,
                           "strides": strides, "conv_kernel_sizes": kernels,
                           "features": stage_features(len(strides), 16, 128)})
    assert plan_for_config(plan, [4.0, 3.2, 3.2], None, 16, 128, None) == plan


def test_plan_for_config_applies_training_overrides():
    from src.data.planning import plan_for_config, pool_and_conv_props, stage_features

    strides, kernels, patch, _ = pool_and_conv_props([1.0, 1.0, 1.0], [64, 64, 64])
    plan = Plan.from_json({"target_spacing": [1.0, 1.0, 1.0], "num_classes": 3, "patch_size": patch,
                           "strides": strides, "conv_kernel_sizes": kernels, "features": stage_features(len(strides))})
    small = plan_for_config(plan, None, [30, 32, 32], 8, 64, 3)
    assert small.patch_size == [32, 32, 32]
    assert small.strides == [[1, 1, 1], [2, 2, 2], [2, 2, 2]]
    assert small.features == [8, 16, 32]
    assert plan.patch_size == [64, 64, 64]  # the input plan is not modified


def test_plan_for_config_refuses_a_different_target_spacing():
    from src.data.planning import plan_for_config

    plan = Plan.from_json({"target_spacing": [1.0, 1.0, 1.0], "num_classes": 2, "patch_size": [16, 16, 16],
                           "strides": [[1, 1, 1]], "conv_kernel_sizes": [[3, 3, 3]], "features": [8]})
    with pytest.raises(UserError, match="preprocess again"):
        plan_for_config(plan, [2.0, 1.0, 1.0])

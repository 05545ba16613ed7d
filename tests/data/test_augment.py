import math

import numpy as np
import pytest

from src.data.augment import (AddGaussianNoise, GammaCorrection, GaussianBlur, IgnoreToBackground, MirrorAxes,
                              ScaleBrightness, ScaleContrast, SimulateLowResolution, SpatialTransform,
                              _draw_factor, build_train_transforms, deep_supervision_strides,
                              downsample_seg_for_deep_supervision, is_anisotropic_patch, resize_cubic,
                              resize_nearest, rotation_matrix)
from tests.data.preprocessed_fixture import ball

PATCH = (12, 16, 16)


def smooth_volume(shape, seed=0, channels=1):
    rng = np.random.default_rng(seed)
    grid = np.indices(shape, dtype=np.float32)
    data = np.stack([np.sin(0.3 * grid[0] + c) + np.cos(0.2 * grid[1]) * np.sin(0.25 * grid[2])
                     for c in range(channels)]).astype(np.float32)
    return data + 0.01 * rng.standard_normal(data.shape).astype(np.float32)


def fire_rate(transform, runs=2000, seed=0, shape=(1, 4, 4, 100)):
    """Fraction of calls that change the data or seg."""
    rng = np.random.default_rng(seed)
    data = np.random.default_rng(1).standard_normal(shape).astype(np.float32) + 2
    seg = np.zeros(shape[1:], dtype=np.int8)
    changed = 0
    for _ in range(runs):
        out, out_seg = transform(data, seg, rng)
        changed += not (np.array_equal(out, data) and np.array_equal(out_seg, seg))
    return changed / runs


def assert_rate(rate, p, runs=2000):
    assert abs(rate - p) < 4 * math.sqrt(p * (1 - p) / runs) + 1e-9, (rate, p)


# ------------------------------------------------------------------ spatial

def test_rotation_matrix_zero_is_identity_and_matrices_are_rotations():
    assert np.allclose(rotation_matrix((0, 0, 0)), np.eye(3))
    m = rotation_matrix((0.3, -0.7, 1.1))
    assert np.allclose(m @ m.T, np.eye(3)) and np.isclose(np.linalg.det(m), 1.0)
    quarter = rotation_matrix((math.pi / 2, 0, 0))
    assert np.allclose(quarter @ [1, 0, 0], [1, 0, 0])  # axis 0 is the rotation axis
    assert np.allclose(np.abs(quarter @ [0, 1, 0]), [0, 0, 1])


def test_identity_spatial_transform_is_a_centre_crop():
    spatial = SpatialTransform(PATCH)
    data = smooth_volume((20, 24, 24), channels=2)
    seg = (data[0] > 0.5).astype(np.int8)
    out, out_seg = spatial.apply(data, seg, np.eye(3))
    crop = (slice(None), slice(4, 16), slice(4, 20), slice(4, 20))
    assert out.shape == (2, *PATCH) and out.dtype == np.float32
    np.testing.assert_allclose(out, data[crop], atol=1e-4)
    np.testing.assert_array_equal(out_seg, seg[crop[1:]])
    none_data, none_seg = spatial.apply(data, seg, None)
    np.testing.assert_array_equal(none_data, data[crop])
    np.testing.assert_array_equal(none_seg, seg[crop[1:]])


def test_quarter_turn_about_axis0_matches_rot90_in_plane():
    spatial = SpatialTransform((8, 16, 16))
    data = smooth_volume((8, 16, 16))
    seg = (data[0] > 0.3).astype(np.int8)
    out, out_seg = spatial.apply(data, seg, rotation_matrix((math.pi / 2, 0, 0)))
    candidates = [np.rot90(seg, k, axes=(1, 2)) for k in (1, 3)]
    assert any(np.array_equal(out_seg, c) for c in candidates)
    assert any(np.allclose(out[0], np.rot90(data[0], k, axes=(1, 2)), atol=1e-3) for k in (1, 3))


@pytest.mark.parametrize("factor", [0.7, 1.4])
def test_scaling_keeps_a_centred_blob_centred_and_rescales_it(factor):
    shape = (31, 31, 31)
    spatial = SpatialTransform((21, 21, 21))
    seg = ball(shape, (15, 15, 15), 6).astype(np.int8)
    data = seg[None].astype(np.float32)
    out, out_seg = spatial.apply(data, seg, np.eye(3) * factor)
    centre = np.argwhere(out_seg == 1).mean(axis=0)
    np.testing.assert_allclose(centre, (10, 10, 10), atol=0.25)
    # the matrix scales coordinates: factor < 1 samples a smaller region, so the blob grows
    expected_volume = seg.sum() / factor ** 3
    assert abs(out_seg.sum() - expected_volume) < 0.12 * expected_volume
    assert abs(out[0].sum() - expected_volume) < 0.12 * expected_volume


def test_border_is_filled_with_data_zero_and_seg_minus_one():
    spatial = SpatialTransform((16, 16, 16))
    data = np.ones((1, 16, 16, 16), dtype=np.float32)
    seg = np.ones((16, 16, 16), dtype=np.int8)
    out, out_seg = spatial.apply(data, seg, rotation_matrix((math.pi / 4, 0, 0)))
    assert out_seg[8, 0, 0] == -1 and abs(out[0, 8, 0, 0]) < 0.01  # cubic splines ring slightly
    assert out_seg[8, 8, 8] == 1 and abs(out[0, 8, 8, 8] - 1) < 1e-4


@pytest.mark.parametrize("with_ignore", [False, True])
def test_labels_follow_nnunet_rule_each_label_mask_linear_then_threshold(with_ignore):
    from scipy import ndimage

    rng = np.random.default_rng(0)
    seg = ndimage.zoom(rng.integers(0, 3, size=(5, 6, 6)), 4, order=0).astype(np.int8)
    if with_ignore:
        seg[:3] = -1
    spatial = SpatialTransform((16, 16, 16))
    matrix = rotation_matrix((0.4, -0.3, 0.2)) * 0.8
    _, out = spatial.apply(seg[None].astype(np.float32), seg, matrix)
    offset = (np.array(seg.shape) - 1) / 2 - matrix @ np.full(3, 7.5)
    expected = np.zeros((16, 16, 16), dtype=np.int8)
    for label in np.unique(seg):  # every present label, ascending, later ones overwrite
        weights = ndimage.affine_transform((seg == label).astype(np.float32), matrix, offset,
                                           output_shape=(16, 16, 16), order=1)
        expected[weights >= 0.5] = label
    np.testing.assert_array_equal(out, expected)
    assert len(np.unique(out)) == len(np.unique(seg))


def test_spatial_probability_and_parameter_ranges():
    spatial = SpatialTransform(PATCH)
    rng = np.random.default_rng(0)
    matrices = [spatial.sample(rng) for _ in range(3000)]
    assert_rate(sum(m is not None for m in matrices) / 3000, 1 - 0.8 * 0.8, 3000)
    for m in matrices:
        if m is None:
            continue
        scale = abs(np.linalg.det(m)) ** (1 / 3)
        assert 0.7 - 1e-9 <= scale <= 1.4 + 1e-9
        angles = np.arccos(np.clip(np.diag(m / scale), -1, 1))
        assert np.all(angles <= math.radians(3 * 30) + 1e-6)


def test_in_plane_only_leaves_axis0_alone_and_rotates_up_to_180_degrees():
    spatial = SpatialTransform((8, 64, 64), in_plane_only=True)
    rng = np.random.default_rng(1)
    angles = []
    for _ in range(2000):
        m = spatial.sample(rng)
        if m is None:
            continue
        np.testing.assert_allclose(m[0], [1, 0, 0])
        np.testing.assert_allclose(m[:, 0], [1, 0, 0])
        angles.append(math.atan2(m[2, 1], m[1, 1]))
    assert max(np.abs(angles)) > math.radians(150)
    assert is_anisotropic_patch((8, 64, 64)) and not is_anisotropic_patch((32, 64, 64))


def test_required_input_shape_covers_every_sampled_transform():
    spatial = SpatialTransform(PATCH)
    patch = np.array(PATCH)
    rng = np.random.default_rng(2)
    assert spatial.required_input_shape(None) == PATCH
    for _ in range(300):
        m = spatial.sample(rng)
        if m is None:
            continue
        region = np.array(spatial.required_input_shape(m))
        assert np.all((region - patch) % 2 == 0) and np.all(region >= patch)
        corners = np.array(np.meshgrid(*[(0, p - 1) for p in patch], indexing="ij")).reshape(3, -1)
        mapped = m @ (corners - (patch[:, None] - 1) / 2) + (region[:, None] - 1) / 2
        assert mapped.min() >= 2 and np.all(mapped.max(axis=1) <= region - 3)


# ------------------------------------------------------------------ intensity

def test_draw_factor_is_balanced_around_one_and_within_range():
    rng = np.random.default_rng(0)
    draws = np.array([_draw_factor(rng, 0.7, 1.5) for _ in range(4000)])
    assert draws.min() >= 0.7 and draws.max() <= 1.5
    assert_rate(float(np.mean(draws < 1)), 0.5, 4000)


def test_gaussian_noise_probability_and_std_range():
    assert_rate(fire_rate(AddGaussianNoise()), 0.1)
    rng = np.random.default_rng(0)
    data = np.zeros((1, 20, 20, 20), dtype=np.float32)
    stds = [np.std(AddGaussianNoise(p=1.0)(data, None, rng)[0]) for _ in range(200)]
    assert min(stds) >= 0 and max(stds) < 0.1 * 1.05 and max(stds) > 0.09
    fixed = AddGaussianNoise(p=1.0, std_range=(0.05, 0.05))(data, None, rng)[0]
    assert abs(np.std(fixed) - 0.05) < 0.002 and abs(np.mean(fixed)) < 0.002 and fixed.dtype == np.float32


def test_gaussian_blur_smooths_some_channels_with_its_probability():
    assert_rate(fire_rate(GaussianBlur()), 0.2 * 0.5)  # one channel: p_sample * p_channel
    rng = np.random.default_rng(0)
    data = np.random.default_rng(1).standard_normal((2, 16, 16, 16)).astype(np.float32)
    out, _ = GaussianBlur(p=1.0, p_per_channel=1.0)(data, None, rng)
    assert np.all(out.std(axis=(1, 2, 3)) < 0.6 * data.std(axis=(1, 2, 3)))
    np.testing.assert_allclose(out.mean(), data.mean(), atol=0.02)


def test_brightness_multiplies_each_channel_within_range():
    assert_rate(fire_rate(ScaleBrightness()), 0.15)
    rng = np.random.default_rng(0)
    data = np.random.default_rng(1).uniform(1, 2, (2, 4, 4, 4)).astype(np.float32)
    for _ in range(100):
        out, _ = ScaleBrightness(p=1.0)(data, None, rng)
        ratio = out / data
        for c in range(2):
            assert np.ptp(ratio[c]) < 1e-5 and 0.75 <= ratio[c].min() and ratio[c].max() <= 1.25


def test_contrast_keeps_range_and_scales_about_the_mean():
    assert_rate(fire_rate(ScaleContrast()), 0.15)
    rng = np.random.default_rng(0)
    data = np.random.default_rng(1).standard_normal((1, 10, 10, 10)).astype(np.float32)
    mean = data.mean()
    for _ in range(100):
        out, _ = ScaleContrast(p=1.0)(data, None, rng)
        assert out.min() >= data.min() - 1e-6 and out.max() <= data.max() + 1e-6
        inside = (out > data.min() + 1e-4) & (out < data.max() - 1e-4) & (np.abs(data - mean) > 0.1)
        factor = (out[inside] - mean) / (data[inside] - mean)
        assert np.ptp(factor) < 1e-3 and 0.75 - 1e-4 <= factor.mean() <= 1.25 + 1e-4


@pytest.mark.parametrize("invert", [False, True])
def test_gamma_keeps_mean_and_std(invert):
    rng = np.random.default_rng(0)
    data = np.random.default_rng(1).standard_normal((2, 8, 8, 8)).astype(np.float32)
    out, _ = GammaCorrection(p=1.0, invert=invert)(data, None, rng)
    assert not np.allclose(out, data)
    np.testing.assert_allclose(out.mean(axis=(1, 2, 3)), data.mean(axis=(1, 2, 3)), atol=1e-4)
    np.testing.assert_allclose(out.std(axis=(1, 2, 3)), data.std(axis=(1, 2, 3)), rtol=1e-4)


def test_gamma_probabilities():
    assert_rate(fire_rate(GammaCorrection(p=0.3)), 0.3)
    assert_rate(fire_rate(GammaCorrection(p=0.1, invert=True)), 0.1)


def test_low_resolution_keeps_shape_and_loses_detail():
    assert_rate(fire_rate(SimulateLowResolution()), 0.25 * 0.5)
    rng = np.random.default_rng(0)
    data = np.random.default_rng(1).standard_normal((1, 16, 16, 16)).astype(np.float32)
    out, _ = SimulateLowResolution(p=1.0, p_per_channel=1.0, zoom_range=(0.5, 0.5))(data, None, rng)
    assert out.shape == data.shape and out.dtype == np.float32
    assert np.abs(np.diff(out, axis=2)).mean() < 0.7 * np.abs(np.diff(data, axis=2)).mean()


def test_low_resolution_leaves_ignored_axes_at_full_resolution():
    rng = np.random.default_rng(0)
    slices = np.random.default_rng(1).standard_normal(12).astype(np.float32)
    data = np.broadcast_to(slices[None, :, None, None], (1, 12, 10, 10)).copy()
    out, _ = SimulateLowResolution(p=1.0, p_per_channel=1.0, ignore_axes=(0,))(data, None, rng)
    np.testing.assert_allclose(out, data, atol=1e-5)


def test_resize_helpers():
    ramp = np.broadcast_to(np.arange(32, dtype=np.float32)[:, None, None], (32, 4, 4))
    up = resize_cubic(ramp, (64, 4, 4))
    centres = (np.arange(64) + 0.5) / 2 - 0.5
    np.testing.assert_allclose(up[16:-16, 0, 0], centres[16:-16], atol=1e-3)
    np.testing.assert_allclose(resize_cubic(np.full((5, 6, 7), 3.0, np.float32), (9, 4, 11)), 3.0, atol=1e-5)
    np.testing.assert_array_equal(resize_nearest(np.arange(8)[:, None, None], (4, 1, 1)).ravel(), [1, 3, 5, 7])


# ------------------------------------------------------------------ mirror, labels, composition

def test_mirroring_flips_data_and_seg_together():
    seg = np.random.default_rng(0).integers(0, 3, size=(6, 7, 8)).astype(np.int8)
    data = np.stack([seg, -seg]).astype(np.float32)
    out, out_seg = MirrorAxes(p_per_axis=1.0)(data, seg, np.random.default_rng(0))
    np.testing.assert_array_equal(out_seg, seg[::-1, ::-1, ::-1])
    np.testing.assert_array_equal(out[0], out_seg)
    np.testing.assert_array_equal(out[1], -out_seg)
    rng = np.random.default_rng(1)
    flipped_axis0 = sum(not np.array_equal(MirrorAxes(axes=(0,))(data, seg, rng)[1], seg) for _ in range(2000))
    assert_rate(flipped_axis0 / 2000, 0.5)


def test_ignore_label_becomes_background():
    seg = np.array([[[-1, 0, 1, 2]]], dtype=np.int8)
    _, out = IgnoreToBackground()(None, seg, None)
    np.testing.assert_array_equal(out, [[[0, 0, 1, 2]]])
    assert out.dtype == np.int8


def test_train_transforms_output_patch_without_ignore_label():
    patch = (16, 24, 24)
    transforms = build_train_transforms(patch)
    assert not transforms.spatial.in_plane_only
    assert build_train_transforms((8, 40, 40)).spatial.in_plane_only
    data = smooth_volume((24, 32, 32))
    seg = np.full((24, 32, 32), -1, dtype=np.int8)
    seg[4:20, 4:28, 4:28] = (data[0, 4:20, 4:28, 4:28] > 0).astype(np.int8)
    rng = np.random.default_rng(0)
    changed = 0
    for _ in range(30):
        out, out_seg = transforms(data, seg, rng)
        assert out.shape == (1, *patch) and out.dtype == np.float32 and out_seg.shape == patch
        assert out_seg.min() >= 0 and out_seg.max() <= 1
        changed += not np.allclose(out, data[:, 4:20, 4:28, 4:28])
    assert changed > 15  # mirroring alone changes 7 of 8 samples


def test_deep_supervision_scales_and_targets():
    strides = [[1, 1, 1], [2, 2, 2], [2, 2, 2], [1, 2, 2]]
    assert deep_supervision_strides(strides) == [(1, 1, 1), (2, 2, 2), (4, 4, 4)]
    assert deep_supervision_strides(strides, deep_supervision=False) == [(1, 1, 1)]
    seg = np.arange(2 * 8 * 8 * 8).reshape(2, 1, 8, 8, 8)
    targets = downsample_seg_for_deep_supervision(seg, deep_supervision_strides(strides))
    assert [t.shape for t in targets] == [(2, 1, 8, 8, 8), (2, 1, 4, 4, 4), (2, 1, 2, 2, 2)]
    np.testing.assert_array_equal(targets[0], seg)
    # nearest to each coarse voxel's centre: every s-th voxel starting at s // 2
    np.testing.assert_array_equal(targets[1], seg[:, :, 1::2, 1::2, 1::2])
    np.testing.assert_array_equal(targets[2], seg[:, :, 2::4, 2::4, 2::4])

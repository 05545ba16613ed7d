"""Resampling: hand-checkable volumes and straightforward reference implementations (parity with nnU-Net v2's
own functions: test_resample_nnunet_parity.py)."""
import numpy as np
import pytest
from scipy import ndimage

from src.data.resample import (compute_new_shape, needs_separate_z, resample_image, resample_probabilities,
                               resample_segmentation)
from tests.data.resample_volumes import smooth_field, smooth_labels

ISO = (1.0, 1.0, 1.0)


# ---------------------------------------------------------------- planning

def test_new_shape_kits_case():
    # 80 * 3 / 3.22 = 74.53 and 512 * 0.78 / 1.62 = 246.52
    assert compute_new_shape((80, 512, 512), (3.0, 0.78, 0.78), (3.22, 1.62, 1.62)) == (75, 247, 247)


def test_new_shape_rounds_half_to_even_like_python():
    assert compute_new_shape((5, 7, 4), ISO, (2.0, 2.0, 1.0)) == (2, 4, 4)


@pytest.mark.parametrize("spacing, target, expected", [
    ((3.0, 0.78, 0.78), (3.22, 1.62, 1.62), 0),   # current spacing anisotropic: its coarse axis
    ((0.8, 3.0, 0.8), (1.0, 1.0, 1.0), 1),
    ((1.0, 1.0, 1.0), (1.0, 1.0, 4.0), 2),        # only the target is anisotropic: the target's axis
    ((1.0, 1.0, 1.0), (1.5, 1.5, 1.5), None),
    ((3.0, 1.0, 1.0), (1.0, 1.0, 1.0), None),     # ratio exactly 3 is not above the threshold
    ((0.24, 1.25, 1.25), (1.0, 1.0, 1.0), None),  # two coarse axes: no single slice axis
    ((0.24, 1.25, 1.25), (4.0, 1.0, 1.0), None),  # the current spacing decides before the target
])
def test_separate_axis_choice(spacing, target, expected):
    assert needs_separate_z(spacing, target) == expected


def test_separate_axis_threshold_is_a_parameter():
    assert needs_separate_z((2.5, 1.0, 1.0), ISO, threshold=2.0) == 0
    assert needs_separate_z((2.5, 1.0, 1.0), ISO) is None


# ---------------------------------------------------------------- images

@pytest.mark.parametrize("order", [0, 1, 3])
@pytest.mark.parametrize("axis", [None, 0, 2])
def test_constant_volume_stays_constant(order, axis):
    data = np.full((2, 9, 12, 7), 4.25, dtype=np.float32)
    data[1] = -3.0
    out = resample_image(data, ISO, (5, 17, 10), order=order, separate_z_axis=axis)
    assert out.shape == (2, 5, 17, 10) and out.dtype == np.float32
    np.testing.assert_allclose(out[0], 4.25, atol=1e-5)
    np.testing.assert_allclose(out[1], -3.0, atol=1e-5)


def test_linear_ramp_downsampled_lands_on_the_voxel_centres():
    ramp = np.broadcast_to(np.arange(10, dtype=np.float32), (1, 2, 3, 10)).copy()
    out = resample_image(ramp, ISO, (2, 3, 4), order=1)
    # output voxel j samples input coordinate (j + 0.5) * 10 / 4 - 0.5
    np.testing.assert_allclose(out[0, 1, 2], [0.75, 3.25, 5.75, 8.25], atol=1e-5)


def test_linear_ramp_upsampled_is_held_at_the_edges():
    ramp = np.broadcast_to(np.arange(4, dtype=np.float32), (1, 1, 1, 4)).copy()
    out = resample_image(ramp, ISO, (1, 1, 8), order=1)
    np.testing.assert_allclose(out[0, 0, 0], [0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3], atol=1e-6)


def test_cubic_spline_reproduces_a_ramp_away_from_the_edges():
    ramp = np.broadcast_to(np.arange(40, dtype=np.float32), (1, 3, 2, 40)).copy()
    out = resample_image(ramp, ISO, (3, 2, 16), order=3)
    expected = (np.arange(16) + 0.5) * 2.5 - 0.5
    np.testing.assert_allclose(out[0, 0, 0, 4:12], expected[4:12], atol=1e-3)
    assert out.min() >= 0 and out.max() <= 39  # clipped to the input range like skimage


def test_cubic_overshoot_is_clipped_to_the_input_range():
    step = np.zeros((1, 4, 4, 12), dtype=np.float32)
    step[..., 6:] = 1.0
    out = resample_image(step, ISO, (4, 4, 29), order=3)
    assert out.min() == 0.0 and out.max() == 1.0
    unclipped = ndimage.zoom(step[0].astype(np.float64), (1, 1, 29 / 12), order=3, mode="nearest", grid_mode=True)
    assert unclipped.max() > 1.0  # the clip actually did something


@pytest.mark.parametrize("order", [1, 3])
def test_matches_scipy_zoom_in_3d(order):
    rng = np.random.default_rng(0)
    data = smooth_field(rng, (1, 14, 19, 11)) * 50
    new_shape = (9, 25, 16)
    out = resample_image(data, ISO, new_shape, order=order)
    factors = [n / o for n, o in zip(new_shape, data.shape[1:])]
    expected = ndimage.zoom(data[0].astype(np.float64), factors, order=order, mode="nearest", grid_mode=True)
    np.clip(expected, data.min(), data.max(), out=expected)
    np.testing.assert_allclose(out[0], expected, atol=1e-4)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_separate_axis_matches_slicewise_zoom_and_nearest_slices(axis):
    rng = np.random.default_rng(axis)
    volume = smooth_field(rng, (12, 13, 14)) * 10
    new_shape = [15, 9, 10]
    new_shape[axis] = 5
    out = resample_image(volume[None], ISO, new_shape, order=3, separate_z_axis=axis)[0]
    # nearest slices: coordinate (j + 0.5) * n_in / n_out - 0.5, rounded half up, clamped
    n_in = volume.shape[axis]
    picked = np.clip(np.floor((np.arange(5) + 0.5) * n_in / 5), 0, n_in - 1).astype(int)
    plane_shape = [n for a, n in enumerate(new_shape) if a != axis]
    for out_index, in_index in enumerate(picked):
        plane = np.take(volume, in_index, axis=axis).astype(np.float64)
        factors = [n / o for n, o in zip(plane_shape, plane.shape)]
        expected = ndimage.zoom(plane, factors, order=3, mode="nearest", grid_mode=True)
        np.clip(expected, plane.min(), plane.max(), out=expected)
        np.testing.assert_allclose(np.take(out, out_index, axis=axis), expected, atol=1e-4)


def test_separate_axis_picks_whole_slices_instead_of_interpolating():
    slice_values = np.arange(10, dtype=np.float32)
    data = np.broadcast_to(slice_values[:, None, None], (10, 6, 6))[None].copy()
    separate = resample_image(data, (3.0, 0.8, 0.8), (5, 6, 6), order=3, separate_z_axis=0)
    np.testing.assert_array_equal(separate[0, :, 0, 0], [1, 3, 5, 7, 9])  # coordinates 0.5, 2.5, ... round up
    joint = resample_image(data, (3.0, 0.8, 0.8), (5, 6, 6), order=1, separate_z_axis=None)
    np.testing.assert_allclose(joint[0, :, 0, 0], [0.5, 2.5, 4.5, 6.5, 8.5], atol=1e-5)


def test_identity_when_the_shape_does_not_change():
    rng = np.random.default_rng(3)
    data = rng.normal(size=(2, 5, 6, 7)).astype(np.float32)
    out = resample_image(data, ISO, (5, 6, 7), order=3, separate_z_axis=0)
    np.testing.assert_array_equal(out, data)
    assert out is not data


@pytest.mark.parametrize("axis", [None, 0, 1, 2])
def test_memory_layout_does_not_change_the_result(axis):
    # nibabel hands out Fortran-ordered arrays; views with odd strides must work too
    rng = np.random.default_rng(4)
    data = smooth_field(rng, (1, 12, 10, 14)) * 10
    seg = smooth_labels(rng, (12, 10, 14))
    new_shape = (5, 13, 9)
    expected = resample_image(data, ISO, new_shape, order=3, separate_z_axis=axis)
    expected_seg = resample_segmentation(seg, ISO, new_shape, axis)
    fortran = np.asfortranarray(data)
    strided = np.ascontiguousarray(data[:, :, ::-1].transpose(0, 3, 1, 2)).transpose(0, 2, 3, 1)[:, :, ::-1]
    for variant in (fortran, strided):
        np.testing.assert_array_equal(variant, data)
        out = resample_image(variant, ISO, new_shape, order=3, separate_z_axis=axis)
        np.testing.assert_allclose(out, expected, atol=1e-5)
        assert out.flags.c_contiguous
    out_seg = resample_segmentation(np.asfortranarray(seg), ISO, new_shape, axis)
    np.testing.assert_array_equal(out_seg, expected_seg)
    assert out_seg.flags.c_contiguous


def test_input_is_left_untouched_when_only_the_separate_axis_changes():
    rng = np.random.default_rng(6)
    data = rng.normal(size=(1, 6, 5, 5)).astype(np.float32)
    before = data.copy()
    out = resample_image(data, (3.0, 0.8, 0.8), (4, 5, 5), order=3, separate_z_axis=0)
    out += 100
    np.testing.assert_array_equal(data, before)


def test_image_argument_errors():
    with pytest.raises(ValueError):
        resample_image(np.zeros((4, 4, 4), np.float32), ISO, (2, 2, 2))
    with pytest.raises(ValueError):
        resample_image(np.zeros((1, 4, 4, 4), np.float32), ISO, (2, 2, 2), order=2)
    with pytest.raises(ValueError):
        resample_image(np.zeros((1, 4, 4, 4), np.float32), ISO, (2, 2, 2), separate_z_axis=3)
    with pytest.raises(ValueError):
        resample_image(np.zeros((1, 4, 4, 4), np.float32), (1.0, 0.0, 1.0), (2, 2, 2))


# ---------------------------------------------------------------- label maps

def test_cube_keeps_its_physical_size():
    seg = np.zeros((40, 40, 40), dtype=np.int16)
    seg[10:30, 10:30, 10:30] = 2
    out = resample_segmentation(seg, ISO, (20, 20, 20), None)
    assert out.dtype == np.int8
    expected = np.zeros((20, 20, 20), dtype=np.int8)
    expected[5:15, 5:15, 5:15] = 2  # 20 mm at 2 mm spacing, same position
    np.testing.assert_array_equal(out, expected)


def test_cube_keeps_its_physical_size_on_an_anisotropic_grid():
    spacing, target = (3.0, 0.8, 0.8), (1.5, 1.6, 1.6)
    seg = np.zeros((10, 40, 40), dtype=np.int16)
    seg[2:8, 6:34, 6:34] = 1  # 18 x 22.4 x 22.4 mm
    new_shape = compute_new_shape(seg.shape, spacing, target)
    assert new_shape == (20, 20, 20)
    out = resample_segmentation(seg, spacing, new_shape, needs_separate_z(spacing, target))
    expected = np.zeros(new_shape, dtype=np.int8)
    # z: output j takes slice j // 2 (order 0); in plane: output j averages voxels 2j and 2j + 1
    expected[4:16, 3:17, 3:17] = 1  # 12 x 1.5 = 18 mm, 14 x 1.6 = 22.4 mm
    np.testing.assert_array_equal(out, expected)


def test_identity_segmentation_is_an_int8_copy():
    seg = np.array([[[-1, 0], [1, 2]]], dtype=np.int16)
    out = resample_segmentation(seg, ISO, (1, 2, 2), None)
    np.testing.assert_array_equal(out, seg)
    assert out.dtype == np.int8


def test_ignore_label_is_kept_and_ties_go_to_the_higher_label():
    seg = np.array([[[-1, -1, -1, -1], [-1, -1, 1, 1]]], dtype=np.int16)  # (1, 2, 4)
    out = resample_segmentation(seg, ISO, (1, 1, 2), None)
    # both outputs sit half way between the rows; left: all -1; right: -1 and 1 tie at 0.5, 1 is written last
    np.testing.assert_array_equal(out, [[[-1, 1]]])
    flipped = resample_segmentation(seg[:, ::-1].copy(), ISO, (1, 1, 2), None)
    np.testing.assert_array_equal(flipped, [[[-1, 1]]])  # label order, not position, breaks the tie


def test_voxel_where_no_label_reaches_half_becomes_zero():
    seg = np.array([[[-1, 1], [2, 3]]], dtype=np.int16)
    assert resample_segmentation(seg, ISO, (1, 1, 1), None)[0, 0, 0] == 0
    seg = np.array([[[3, 1], [2, 2]]], dtype=np.int16)
    assert resample_segmentation(seg, ISO, (1, 1, 1), None)[0, 0, 0] == 2


def _threshold_reference(seg, new_shape, separate_z_axis):
    """The slow, obvious version: every label's indicator zoomed (order 1) and thresholded in turn."""
    def per_label(volume, shape):
        out = np.zeros(shape, dtype=np.int8)
        for label in np.unique(volume):
            factors = [n / o for n, o in zip(shape, volume.shape)]
            indicator = ndimage.zoom((volume == label).astype(np.float64), factors, order=1, mode="nearest",
                                     grid_mode=True)
            out[indicator >= 0.5] = label
        return out

    if separate_z_axis is None:
        return per_label(seg, new_shape)
    n_in = seg.shape[separate_z_axis]
    picked = np.clip(np.floor((np.arange(new_shape[separate_z_axis]) + 0.5) * n_in / new_shape[separate_z_axis]),
                     0, n_in - 1).astype(int)
    plane_shape = [n for a, n in enumerate(new_shape) if a != separate_z_axis]
    planes = [per_label(np.take(seg, i, axis=separate_z_axis), plane_shape) for i in picked]
    return np.stack(planes, axis=separate_z_axis)


@pytest.mark.parametrize("new_shape, axis", [
    ((9, 25, 16), None), ((20, 7, 13), None), ((6, 21, 19), 0), ((17, 9, 12), 1), ((11, 30, 5), 2)])
def test_segmentation_equals_per_label_thresholding(new_shape, axis):
    rng = np.random.default_rng(sum(new_shape))
    seg = smooth_labels(rng, (14, 19, 11))
    out = resample_segmentation(seg, ISO, new_shape, axis)
    expected = _threshold_reference(seg, new_shape, axis)
    np.testing.assert_array_equal(out, expected)
    assert set(np.unique(out)) <= set(np.unique(seg)) | {0}


def _zoom_reference(volume, new_shape, order, separate_z_axis):
    """scipy's zoom (grid mode, edge values) plus skimage's clip, slice by slice with nearest slices."""
    def zoom(array, shape):
        factors = [n / o for n, o in zip(shape, array.shape)]
        out = ndimage.zoom(array.astype(np.float64), factors, order=order, mode="nearest", grid_mode=True)
        return np.clip(out, array.min(), array.max())

    if separate_z_axis is None:
        return zoom(volume, new_shape)
    n_in, n_out = volume.shape[separate_z_axis], new_shape[separate_z_axis]
    picked = np.clip(np.floor((np.arange(n_out) + 0.5) * n_in / n_out), 0, n_in - 1).astype(int)
    plane_shape = [n for a, n in enumerate(new_shape) if a != separate_z_axis]
    return np.stack([zoom(np.take(volume, i, axis=separate_z_axis), plane_shape) for i in picked],
                    axis=separate_z_axis)


def test_random_small_grids_match_the_references():
    # tiny and degenerate sizes, every order, both layouts, crowded label junctions (near-ties)
    rng = np.random.default_rng(2024)
    for trial in range(400):
        shape = tuple(int(n) for n in rng.integers(1, 9, 3))
        new_shape = tuple(int(n) for n in rng.integers(1, 11, 3))
        if shape == new_shape:
            continue
        axis = (None, 0, 1, 2)[trial % 4]
        order = (0, 1, 3)[trial % 3]
        volume = rng.normal(size=shape).astype(np.float32)
        seg = rng.integers(-1, 3, size=shape).astype(np.int16)
        if trial % 2:
            volume, seg = np.asfortranarray(volume), np.asfortranarray(seg)
        out = resample_image(volume[None], ISO, new_shape, order=order, separate_z_axis=axis)[0]
        np.testing.assert_allclose(out, _zoom_reference(volume, new_shape, order, axis), atol=1e-4,
                                   err_msg=f"{shape} -> {new_shape}, order {order}, axis {axis}")
        np.testing.assert_array_equal(resample_segmentation(seg, ISO, new_shape, axis),
                                      _threshold_reference(seg, new_shape, axis),
                                      err_msg=f"{shape} -> {new_shape}, axis {axis}")


def test_segmentation_argument_errors():
    with pytest.raises(ValueError):
        resample_segmentation(np.zeros((4, 4, 4), np.float32), ISO, (2, 2, 2), None)
    with pytest.raises(ValueError):
        resample_segmentation(np.full((4, 4, 4), 200, np.int16), ISO, (2, 2, 2), None)
    with pytest.raises(ValueError):
        resample_segmentation(np.zeros((1, 4, 4, 4), np.int16), ISO, (2, 2, 2), None)


# ---------------------------------------------------------------- probabilities

@pytest.mark.parametrize("axis", [None, 0, 1])
def test_probabilities_still_sum_to_one(axis):
    rng = np.random.default_rng(7)
    logits = rng.normal(size=(3, 8, 11, 9)) * 3
    probs = (np.exp(logits) / np.exp(logits).sum(axis=0, keepdims=True)).astype(np.float32)
    out = resample_probabilities(probs, (13, 6, 20), axis)
    assert out.shape == (3, 13, 6, 20) and out.dtype == np.float32
    assert out.min() >= 0
    np.testing.assert_allclose(out.sum(axis=0), 1.0, atol=1e-5)


def test_probabilities_are_linear_with_nearest_slices_on_the_separate_axis():
    probs = np.zeros((2, 4, 1, 4), dtype=np.float32)
    probs[1] = np.arange(4, dtype=np.float32)[None, None, :] / 3
    probs[1] *= np.arange(1, 5, dtype=np.float32)[:, None, None] / 4
    probs[0] = 1 - probs[1]
    out = resample_probabilities(probs, (8, 1, 8), separate_z_axis=0)
    in_plane = np.array([0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3]) / 3
    picked = [0, 0, 1, 1, 2, 2, 3, 3]  # coordinates -0.25, 0.25, 0.75, ... rounded half up
    expected = in_plane[None, :] * (np.array(picked)[:, None] + 1) / 4
    np.testing.assert_allclose(out[1, :, 0, :], expected, atol=1e-6)

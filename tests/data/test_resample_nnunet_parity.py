"""Resampling against nnU-Net v2's own functions; runs where nnunetv2 is installed (the benchmark venv,
requirements-bench.txt) and is skipped elsewhere."""
import importlib.util

import numpy as np
import pytest

from src.data.resample import compute_new_shape, needs_separate_z, resample_image, resample_probabilities, \
    resample_segmentation
from tests.data.resample_volumes import dice, organ_labels, smooth_field, smooth_labels

NNUNET_AVAILABLE = importlib.util.find_spec("nnunetv2") is not None
# Non-integer zoom factors, like real data: with integer ones every boundary voxel is an exact tie.
PARITY_CASES = [
    ((20, 41, 37), (3.0, 0.8, 0.8), (3.22, 1.62, 1.62)),
    ((24, 30, 28), (1.0, 1.0, 1.0), (0.7, 1.3, 1.1)),
    ((30, 21, 23), (0.8, 2.9, 0.8), (1.7, 1.0, 1.7)),
    ((12, 40, 40), (1.0, 1.0, 1.0), (3.5, 1.0, 1.0)),
]


def _nnunet_resample(array, new_shape, spacing, target, is_seg, order):
    from nnunetv2.preprocessing.resampling.default_resampling import resample_data_or_seg_to_shape

    return resample_data_or_seg_to_shape(array, new_shape, spacing, target, is_seg=is_seg, order=order,
                                         order_z=0, force_separate_z=None)


@pytest.mark.skipif(not NNUNET_AVAILABLE, reason="nnunetv2 is not installed (see requirements-bench.txt)")
@pytest.mark.parametrize("shape, spacing, target", PARITY_CASES)
def test_parity_with_nnunet_v2(shape, spacing, target):
    from nnunetv2.preprocessing.resampling.default_resampling import (
        compute_new_shape as nnunet_new_shape, determine_do_sep_z_and_axis)

    rng = np.random.default_rng(11)
    image = smooth_field(rng, (1,) + shape) * 100
    seg = organ_labels(shape)
    new_shape = compute_new_shape(shape, spacing, target)
    assert new_shape == tuple(int(n) for n in nnunet_new_shape(shape, spacing, target))
    axis = needs_separate_z(spacing, target)
    separate, nnunet_axis = determine_do_sep_z_and_axis(None, spacing, target)
    assert (axis is not None) == separate and (not separate or axis == nnunet_axis)

    def reference(array, is_seg, order):
        return _nnunet_resample(array, new_shape, spacing, target, is_seg, order)

    ours = resample_image(image, spacing, new_shape, order=3, separate_z_axis=axis)
    theirs = reference(image, False, 3)
    assert np.corrcoef(ours.ravel(), theirs.ravel())[0, 1] >= 0.9999
    np.testing.assert_allclose(ours, theirs, atol=1e-3)

    probs = resample_probabilities(image / 100, new_shape, axis)
    np.testing.assert_allclose(probs, reference(image / 100, False, 1), atol=1e-5)

    # batchgenerators >= 0.25.5 resolves labels by argmax where this contract thresholds at 0.5 in
    # ascending order; the two differ only where several labels meet, hence Dice rather than equality.
    ours_seg = resample_segmentation(seg, spacing, new_shape, axis)
    theirs_seg = reference(seg[None], True, 1)[0]
    for label in np.unique(seg):
        assert dice(ours_seg == label, theirs_seg == label) >= 0.95, label


@pytest.mark.skipif(not NNUNET_AVAILABLE, reason="nnunetv2 is not installed (see requirements-bench.txt)")
@pytest.mark.parametrize("shape, spacing, target", PARITY_CASES + [((20, 40, 36), (3.0, 0.8, 0.8), (3.0, 1.6, 1.6))])
def test_segmentation_equals_nnunet_v2_with_the_threshold_rule(shape, spacing, target, monkeypatch):
    """nnU-Net v2's own resampling path, with batchgenerators' label rule swapped for the classic one
    (per-label skimage resize, >= 0.5, ascending), agrees voxel for voxel: only the rule differs."""
    import nnunetv2.preprocessing.resampling.default_resampling as nnunet_resampling
    from skimage.transform import resize

    def threshold_resize_segmentation(segmentation, new_shape, order=3, **_):
        out = np.zeros(new_shape, dtype=segmentation.dtype)
        for label in np.unique(segmentation):
            indicator = resize((segmentation == label).astype(float), new_shape, order, mode="edge", clip=True,
                               anti_aliasing=False)
            out[indicator >= 0.5] = label
        return out

    monkeypatch.setattr(nnunet_resampling, "resize_segmentation", threshold_resize_segmentation)
    rng = np.random.default_rng(5)
    new_shape = compute_new_shape(shape, spacing, target)
    axis = needs_separate_z(spacing, target)
    for seg in (organ_labels(shape), smooth_labels(rng, shape)):
        theirs = _nnunet_resample(seg[None], new_shape, spacing, target, True, 1)[0]
        np.testing.assert_array_equal(resample_segmentation(seg, spacing, new_shape, axis), theirs)

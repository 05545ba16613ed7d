"""Back to the original grid in slabs of the first axis: voxel for voxel what one slab (the whole volume) gives."""
import numpy as np
import pytest

from src.data.resample import resample_probabilities
from src.data.resample_slabs import ROWS_PER_BLOCK, ChannelSlabs
from src.infer.geometry import argmax_resampled, paste_into_crop_box, probabilities_to_original, slab_rows

# (input shape, output shape, separate axis): growing, shrinking and mixed axes, the separate axis first
# (thick slices, the KiTS case), in the middle picked after the in-plane work, last picked before it
CASES = [
    ((12, 10, 9), (40, 23, 20), None),
    ((40, 20, 24), (33, 31, 16), None),
    ((40, 20, 24), (36, 20, 30), None),
    ((7, 16, 15), (45, 24, 22), 0),
    ((18, 5, 14), (36, 17, 26), 1),
    ((22, 13, 30), (48, 19, 7), 2),
]


def noisy_probs(shape, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((classes,) + tuple(shape)).astype(np.float32)
    logits[:, :, : shape[1] // 2] *= 4  # sharper half: ties and near-ties on both sides of the argmax
    probs = np.exp(logits)
    return (probs / probs.sum(axis=0)).astype(np.float32)


@pytest.mark.parametrize("shape_in,shape_out,axis", CASES)
def test_channel_slabs_equal_the_whole_volume_resampling(shape_in, shape_out, axis):
    probs = noisy_probs(shape_in, classes=2)[:1]
    whole = resample_probabilities(probs, shape_out, axis)[0]
    channel = ChannelSlabs(probs[0], shape_out, axis)
    for rows in (ROWS_PER_BLOCK, 2 * ROWS_PER_BLOCK):
        pieces = [channel.rows(start, min(start + rows, shape_out[0])) for start in range(0, shape_out[0], rows)]
        assert len(pieces) >= 2
        np.testing.assert_array_equal(np.concatenate(pieces), whole)  # bit for bit, not approximately


@pytest.mark.parametrize("shape_in,shape_out,axis", CASES)
def test_slabs_give_the_labels_of_one_slab(shape_in, shape_out, axis):
    probs = noisy_probs(shape_in, seed=1)
    one_slab = argmax_resampled(probs, shape_out, axis, rows=10 ** 6)
    reference = np.argmax(resample_probabilities(probs, shape_out, axis), axis=0)  # the path before slabs
    np.testing.assert_array_equal(one_slab, reference)
    several = argmax_resampled(probs, shape_out, axis, rows=ROWS_PER_BLOCK)
    assert several.dtype == np.uint8
    np.testing.assert_array_equal(several, one_slab)


def test_unaligned_start_is_refused_and_rows_round_up_to_blocks():
    channel = ChannelSlabs(noisy_probs((8, 8, 8), 1)[0], (40, 9, 9))
    with pytest.raises(ValueError, match="multiple"):
        channel.rows(3, 20)
    assert slab_rows((100, 512, 512), 1) == ROWS_PER_BLOCK
    assert slab_rows((100, 512, 512), ROWS_PER_BLOCK + 1) == 2 * ROWS_PER_BLOCK
    assert slab_rows((1000, 512, 512)) % ROWS_PER_BLOCK == 0
    with pytest.raises(ValueError):
        slab_rows((10, 10, 10), 0)


def test_same_shape_and_fortran_ordered_probabilities_in_slabs():
    probs = noisy_probs((40, 9, 11), seed=2)
    np.testing.assert_array_equal(argmax_resampled(probs, probs.shape[1:], None, rows=ROWS_PER_BLOCK),
                                  np.argmax(probs, axis=0))
    fortran = np.asfortranarray(noisy_probs((10, 9, 11), seed=3))  # not the predictor's layout: whole-volume fallback
    np.testing.assert_array_equal(argmax_resampled(fortran, (35, 14, 12), 0, rows=ROWS_PER_BLOCK),
                                  np.argmax(resample_probabilities(fortran, (35, 14, 12), 0), axis=0))


@pytest.mark.parametrize("axis_spacing", [(3.0, 0.8, 0.8), (0.8, 0.8, 0.8)])
def test_cropped_case_in_slabs_equals_one_slab(axis_spacing):
    # crop box inside a larger original volume; separate z when the original slices are thick
    props = {"shape_before_crop": [44, 30, 28], "crop_bbox": [[3, 41], [2, 27], [0, 21]],
             "shape_after_crop": [38, 25, 21], "original_spacing": list(axis_spacing),
             "target_spacing": [2.0, 1.6, 1.6]}
    props["shape_after_resample"] = [int(round(n * s / t)) for n, s, t in
                                     zip(props["shape_after_crop"], axis_spacing, props["target_spacing"])]
    probs = noisy_probs(props["shape_after_resample"], seed=4)
    several = probabilities_to_original(probs, props, rows=ROWS_PER_BLOCK)
    one_slab = probabilities_to_original(probs, props, rows=10 ** 6)
    np.testing.assert_array_equal(several, one_slab)
    from src.infer.geometry import back_separate_z_axis
    cropped = np.argmax(resample_probabilities(probs, props["shape_after_crop"], back_separate_z_axis(props)), axis=0)
    np.testing.assert_array_equal(several, paste_into_crop_box(cropped.astype(np.uint8), props))
    assert several.dtype == np.uint8 and not several[:3].any() and not several[:, :, 21:].any()

import numpy as np
import pytest

from src.data.sampler import (centred_bbox, crop_with_padding, oversample_mask,
                              present_foreground_classes, sample_patch_bbox)


@pytest.mark.parametrize("batch, fraction, forced", [
    (2, 0.33, [False, True]),  # round(0.66) = 1
    (1, 0.33, [False]),
    (3, 0.33, [False, False, True]),
    (6, 0.33, [False] * 4 + [True] * 2),
    (8, 0.33, [False] * 5 + [True] * 3),
    (4, 0.0, [False] * 4),
    (4, 1.0, [True] * 4),
])
def test_oversample_mask_forces_the_last_items(batch, fraction, forced):
    assert oversample_mask(batch, fraction).tolist() == forced


def test_random_boxes_stay_inside_and_reach_every_position():
    rng = np.random.default_rng(0)
    shape, patch = (10, 20, 30), (4, 20, 8)
    starts = set()
    for _ in range(2000):
        box = sample_patch_bbox(shape, patch, False, {}, rng)
        assert all(hi - lo == p for (lo, hi), p in zip(box, patch))
        assert all(0 <= lo and hi <= s for (lo, hi), s in zip(box, shape))
        starts.add(tuple(lo for lo, _ in box))
    assert {s[0] for s in starts} == set(range(7)) and {s[1] for s in starts} == {0}
    assert {s[2] for s in starts} == set(range(23))


def test_volume_smaller_than_patch_is_padded_on_both_sides():
    rng = np.random.default_rng(0)
    lows = {sample_patch_bbox((10, 10, 10), (15, 10, 14), False, {}, rng)[0][0] for _ in range(200)}
    # need_to_pad 5: nnU-Net draws the start in [-3, -2], i.e. the volume sits (almost) centred
    assert lows == {-3, -2}
    box = sample_patch_bbox((10, 10, 10), (15, 10, 14), False, {}, rng)
    assert box[2] == (-2, 12)


def test_forced_boxes_are_centred_on_foreground_and_may_leave_the_volume():
    shape, patch = (20, 20, 20), (8, 8, 8)
    fg = {1: np.array([[10, 10, 10]]), 2: np.array([[19, 19, 19]]), 3: np.zeros((0, 3), dtype=int)}
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(200):
        box = sample_patch_bbox(shape, patch, True, fg, rng)
        seen.add(box[0])
        assert box in ([(6, 14)] * 3, [(15, 23)] * 3)
    assert seen == {(6, 14), (15, 23)}  # both present classes, the empty one never
    near_start = sample_patch_bbox(shape, patch, True, {1: np.array([[1, 2, 3]])}, rng)
    assert near_start == [(0, 8), (0, 8), (0, 8)]  # clamped at the lower end only


def test_forced_box_without_foreground_falls_back_to_random():
    rng = np.random.default_rng(0)
    empty = {1: np.zeros((0, 3), dtype=int), 2: np.zeros((0, 3), dtype=int)}
    boxes = {tuple(sample_patch_bbox((12, 12, 12), (4, 4, 4), True, empty, rng)) for _ in range(50)}
    assert len(boxes) > 10
    assert present_foreground_classes({0: np.ones((3, 3)), 1: np.ones((1, 3)), 2: np.zeros((0, 3))}) == [1]


def test_crop_with_padding_fills_outside_and_copies_inside():
    array = np.arange(2 * 4 * 5 * 6, dtype=np.float32).reshape(2, 4, 5, 6)
    out = crop_with_padding(array, [(-1, 3), (2, 7), (4, 8)], -7.0)
    assert out.shape == (2, 4, 5, 4)
    np.testing.assert_array_equal(out[:, 1:, :3, :2], array[:, 0:3, 2:5, 4:6])
    assert np.all(out[:, 0] == -7) and np.all(out[:, :, 3:] == -7) and np.all(out[..., 2:] == -7)
    inside = crop_with_padding(array, [(0, 2), (0, 2), (0, 2)], 0.0)
    inside[:] = 99
    assert array[0, 0, 0, 0] == 0  # a copy, never a view of the case
    assert np.all(crop_with_padding(array[0], [(10, 12), (0, 2), (0, 2)], -1) == -1)


def test_centred_bbox_grows_symmetrically():
    assert centred_bbox([(2, 6), (0, 4), (-1, 3)], (8, 4, 6)) == [(0, 8), (0, 4), (-2, 4)]
    with pytest.raises(ValueError):
        centred_bbox([(0, 4)] * 3, (5, 4, 4))

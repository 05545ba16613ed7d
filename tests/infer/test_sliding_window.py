import itertools
import json
import math
import tracemalloc

import numpy as np
import pytest

from src.infer.sliding_window import (WindowAccumulator, axis_starts, gaussian_importance_map,
                                      mirror_combinations, pad_to_patch, sliding_window_logits,
                                      window_starts)


def test_axis_starts_follow_nnunet_count_and_spread():
    assert axis_starts(100, 40, 0.5) == [0, 20, 40, 60]
    assert axis_starts(40, 40, 0.5) == [0]
    assert axis_starts(50, 40, 0.5) == [0, 10]
    # 3 windows needed for 93 voxels with an 80 patch? ceil(13/40)+1 = 2
    assert axis_starts(93, 80, 0.5) == [0, 13]
    for size, patch in [(247, 160), (517, 128), (33, 16), (17, 16)]:
        starts = axis_starts(size, patch, 0.5)
        assert len(starts) == math.ceil((size - patch) / (0.5 * patch)) + 1
        assert starts[0] == 0 and starts[-1] == size - patch
        gaps = np.diff(starts)
        assert np.all(gaps <= 0.5 * patch) and np.all(gaps > 0)
    with pytest.raises(ValueError):
        axis_starts(10, 16, 0.5)


def test_window_starts_cover_every_axis_combination():
    starts = window_starts((33, 16, 24), (16, 16, 16), 0.5)
    assert len(starts) == 4 * 1 * 2  # ceil(17 / 8) + 1 = 4 along the first axis
    assert starts[0] == (0, 0, 0) and starts[-1] == (17, 0, 8)


def test_gaussian_importance_map_shape_peak_and_sigma():
    patch = (16, 24, 32)
    g = gaussian_importance_map(patch)
    assert g.shape == patch and g.dtype == np.float32
    centre = (8, 12, 16)
    assert g[centre] == pytest.approx(1.0)
    assert g.max() == pytest.approx(1.0)
    assert g.min() > 0
    # sigma = patch / 8: one sigma from the centre along an axis the weight is exp(-1/2)
    assert g[8 + 2, 12, 16] == pytest.approx(math.exp(-0.5), rel=1e-5)
    assert g[8, 12 + 3, 16] == pytest.approx(math.exp(-0.5), rel=1e-5)
    assert g[8, 12, 16 - 4] == pytest.approx(math.exp(-0.5), rel=1e-5)


def test_mirror_combinations():
    assert mirror_combinations(False) == [()]
    combos = mirror_combinations(True)
    assert len(combos) == 8 and combos[0] == () and len(set(combos)) == 8
    assert (0, 1, 2) in combos


def test_pad_to_patch_centres_and_crops_back():
    data = np.random.default_rng(0).normal(size=(2, 5, 16, 9)).astype(np.float32)
    padded, crop = pad_to_patch(data, (8, 8, 8))
    assert padded.shape == (2, 8, 16, 9)
    np.testing.assert_array_equal(padded[(slice(None),) + crop], data)
    assert crop[0] == slice(1, 6)
    same, crop = pad_to_patch(data, (4, 4, 4))
    assert same is data


def identity_net(batch):
    return batch.copy()


@pytest.mark.parametrize("shape,mirror", [((20, 24, 17), False), ((20, 24, 17), True), ((5, 9, 30), True)])
def test_identity_network_reproduces_the_input(shape, mirror):
    data = np.random.default_rng(1).normal(size=(2,) + shape).astype(np.float32)
    out = sliding_window_logits(data, identity_net, (8, 12, 16), num_classes=2, batch_size=3,
                                mirror=mirror, progress=False)
    assert out.shape == data.shape and out.dtype == np.float32
    np.testing.assert_allclose(out, data, rtol=1e-5, atol=1e-5)


def reference_sliding_window(data, net, patch, num_classes, mirror):
    """Plain per-window reference: full-size arrays per window (fine for tiny volumes)."""
    g = gaussian_importance_map(patch)
    total = np.zeros((num_classes,) + data.shape[1:], np.float64)
    weights = np.zeros(data.shape[1:], np.float64)
    flips = [()] + [c for k in (1, 2, 3) for c in itertools.combinations((0, 1, 2), k)] if mirror else [()]
    for start in window_starts(data.shape[1:], patch, 0.5):
        sl = tuple(slice(s, s + p) for s, p in zip(start, patch))
        window = data[(slice(None),) + sl][None]
        preds = []
        for f in flips:
            axes = tuple(a + 2 for a in f)
            flipped = np.flip(window, axes) if f else window
            pred = net(np.ascontiguousarray(flipped))
            preds.append(np.flip(pred, axes) if f else pred)
        total[(slice(None),) + sl] += np.mean(preds, axis=0)[0] * g
        weights[sl] += g
    return total / weights


def position_dependent_net(batch):
    """Neither translation nor flip equivariant: cumulative sums along axes plus a ramp."""
    ramp = np.arange(batch.shape[-1], dtype=np.float32)
    first = np.cumsum(batch[:, :1], axis=2) + ramp
    second = np.cumsum(batch[:, :1], axis=4) * 0.5 - batch[:, 1:2] ** 2
    third = batch.sum(axis=1, keepdims=True) * ramp[::-1]
    return np.concatenate([first, second, third], axis=1).astype(np.float32)


@pytest.mark.parametrize("mirror", [False, True])
def test_weighted_average_matches_plain_reference(mirror):
    data = np.random.default_rng(2).normal(size=(2, 19, 22, 13)).astype(np.float32)
    patch = (8, 8, 8)
    out = sliding_window_logits(data, position_dependent_net, patch, num_classes=3, batch_size=2,
                                mirror=mirror, progress=False)
    ref = reference_sliding_window(data, position_dependent_net, patch, 3, mirror)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)


def test_every_network_call_gets_the_fixed_batch_size():
    calls = []

    def net(batch):
        calls.append(batch.shape)
        return batch[:, :1].copy()

    data = np.ones((1, 16, 16, 24), np.float32)
    # 3 x 3 x 5 = 45 windows -> 12 batches of 4 (the last padded), each mirrored 8 times
    sliding_window_logits(data, net, (8, 8, 8), num_classes=1, batch_size=4, mirror=True, progress=False)
    assert len(calls) == 12 * 8
    assert set(calls) == {(4, 1, 8, 8, 8)}


def test_wrong_network_output_shape_is_reported():
    with pytest.raises(ValueError, match="shape"):
        sliding_window_logits(np.ones((1, 8, 8, 8), np.float32), lambda b: b[:, :, :4], (8, 8, 8),
                              num_classes=1, progress=False)


def test_memory_stays_bounded_by_the_output_size():
    shape = (48, 48, 48)
    data = np.zeros((1,) + shape, np.float32)
    out_bytes = 2 * np.prod(shape) * 4

    def net(batch):
        return np.concatenate([batch, -batch], axis=1)

    sliding_window_logits(data[:, :8, :8, :8], net, (8, 8, 8), num_classes=2, progress=False)  # warm-up
    tracemalloc.start()
    sliding_window_logits(data, net, (8, 8, 8), num_classes=2, batch_size=2, progress=False)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # 1331 windows: keeping per-window outputs would need > 6x the output; we allow sum + weights + slack
    assert peak < 2.0 * out_bytes


def test_accumulator_refuses_uncovered_voxels():
    acc = WindowAccumulator(1, (8, 8, 8), (4, 4, 4))
    acc.add((0, 0, 0), np.ones((1, 4, 4, 4), np.float32))
    with pytest.raises(ValueError, match="no window"):
        acc.result()


def test_window_layout_round_trips_and_pads_small_axes():
    from src.infer.sliding_window import WindowLayout, window_layout

    layout = window_layout((5, 30, 16), (8, 16, 16), 0.5)
    assert layout.pads == ((1, 2), (0, 0), (0, 0))
    assert layout.padded_shape == (8, 30, 16)
    assert layout.crop == (slice(1, 6), slice(0, 30), slice(0, 16))
    assert layout.starts == ((0, 0, 0), (0, 7, 0), (0, 14, 0))
    assert WindowLayout.from_json(json.loads(json.dumps(layout.to_json()))) == layout

"""Locate, then segment (src/infer/locate.py) on tiny volumes with numpy networks: the region, the fallbacks,
the windows skipped and that skipping never changes the logits inside the region."""
import numpy as np
import pytest

from src.infer import stage_times
from src.infer.locate import (BACKGROUND_LOGIT, LocateSettings, Locator, Region, block_reduce, crop_box,
                              crop_logits, inside_mask, kept_windows, locate_region, region_logits,
                              window_subset_logits)
from src.infer.sliding_window import sliding_window_logits, window_layout

PATCH = (8, 8, 8)
SHAPE = (16, 32, 32)


def position_dependent_net(windows: np.ndarray) -> np.ndarray:
    """3 classes from the window content plus a ramp over the window, so that overlapping windows disagree
    and the Gaussian average depends on exactly which windows ran."""
    x = windows[:, 0]
    ramp = np.linspace(-1.0, 1.0, x.shape[-1], dtype=np.float32)
    return np.stack([np.zeros_like(x), x + ramp, 0.5 * x * x - ramp], axis=1).astype(np.float32)


def volume(seed=0, shape=SHAPE):
    return np.random.default_rng(seed).normal(size=(1, *shape)).astype(np.float32)


def test_block_reduce_mean_and_max_with_partial_blocks():
    data = np.arange(5 * 4 * 4, dtype=np.float32).reshape(1, 5, 4, 4)
    mean = block_reduce(data, (2, 2, 2), "mean")
    assert mean.shape == (1, 3, 2, 2)
    assert mean[0, 0, 0, 0] == pytest.approx(data[0, :2, :2, :2].mean())
    assert mean[0, 2, 0, 0] == pytest.approx(data[0, 4, :2, :2].mean())  # edge-padded last block
    seg = np.zeros((1, 5, 4, 4), dtype=np.int8)
    seg[0, 4, 3, 3] = 1
    assert block_reduce(seg, (2, 2, 2), "max")[0].sum() == 1


def test_nothing_found_falls_back():
    region = locate_region(np.full((4, 4, 4), 0.4, np.float32), (2, 2, 2), (8, 8, 8), (1, 1, 1), LocateSettings())
    assert region.fallback and "found nothing" in region.reason


def test_unsure_falls_back_and_sure_does_not():
    foreground = np.zeros((4, 8, 8), np.float32)
    foreground[1, 1:3, 1:3] = 0.9  # 4 found voxels
    foreground[2, 4:8, 4:8] = 0.3  # 16 candidates below the threshold: 80% unsure
    settings = LocateSettings(max_unsure=0.5)
    assert "unsure" in locate_region(foreground, (2, 2, 2), (8, 16, 16), (1, 1, 1), settings).reason
    assert not locate_region(foreground, (2, 2, 2), (8, 16, 16), (1, 1, 1),
                             LocateSettings(max_unsure=0.9)).fallback


def test_region_boxes_with_margin_in_millimetres_clipped_to_the_volume():
    foreground = np.zeros((4, 8, 8), np.float32)
    foreground[1, 2, 2] = 0.9
    foreground[3, 7, 7] = 0.9  # a second component at the far corner
    region = locate_region(foreground, (2, 2, 2), (8, 16, 16), (2.0, 1.0, 1.0), LocateSettings(margin_mm=3.0))
    # coarse voxel (1, 2, 2) covers fine [2, 4) x [4, 6) x [4, 6); margin 3 mm = 2 slices of 2 mm, 3 voxels of 1 mm
    assert region.boxes == (((0, 6), (1, 9), (1, 9)), ((4, 8), (11, 16), (11, 16)))


def test_kept_windows_are_those_overlapping_a_box():
    layout, kept = kept_windows(SHAPE, PATCH, 0.5, [((0, 3), (0, 3), (0, 3))])
    assert len(layout.starts) == 3 * 7 * 7
    assert kept == [(0, 0, 0)]
    _, kept = kept_windows(SHAPE, PATCH, 0.5, [((5, 6), (13, 14), (0, 1))])
    # z: windows at 0 and 4 hold slice 5; y: windows at 8 and 12 hold row 13; x: only the window at 0
    assert kept == [(0, 8, 0), (0, 12, 0), (4, 8, 0), (4, 12, 0)]


@pytest.mark.parametrize("mirror", [False, True])
def test_skipped_windows_never_change_the_logits_inside_the_region(mirror):
    data = volume(1)
    boxes = (((3, 9), (5, 14), (20, 30)), ((12, 16), (0, 4), (0, 6)))
    whole = sliding_window_logits(data, position_dependent_net, PATCH, 3, 0.5, 2, mirror, progress=False)
    fast, run, total = window_subset_logits(data, position_dependent_net, PATCH, 3, boxes, 0.5, 2, mirror)
    inside = inside_mask(SHAPE, boxes)
    assert total == 147 and 0 < run < total
    np.testing.assert_array_equal(fast[:, inside], whole[:, inside])
    assert (fast[0, ~inside] == 0).all() and (fast[1:, ~inside] == BACKGROUND_LOGIT).all()
    assert (whole.argmax(0)[~inside] != 0).any()  # the test would notice background forced inside


def test_a_region_covering_everything_runs_every_window_and_equals_the_whole_volume():
    data = volume(2)
    whole = sliding_window_logits(data, position_dependent_net, PATCH, 3, 0.5, 3, False, progress=False)
    fast, run, total = window_subset_logits(data, position_dependent_net, PATCH, 3,
                                            [tuple((0, s) for s in SHAPE)], 0.5, 3, False)
    assert run == total
    np.testing.assert_array_equal(fast, whole)


def test_crop_box_grows_to_the_patch_inside_the_volume():
    assert crop_box([((0, 2), (30, 32), (10, 12))], SHAPE, PATCH) == ((0, 8), (24, 32), (7, 15))
    assert crop_box([((1, 3), (1, 3), (1, 3)), ((10, 14), (20, 30), (1, 2))], SHAPE, PATCH) == \
        ((1, 14), (1, 30), (0, 8))


def test_crop_logits_run_the_crop_windows_and_background_elsewhere():
    data = volume(3)
    logits, run, total = crop_logits(data, position_dependent_net, PATCH, 3, [((4, 8), (10, 14), (10, 14))])
    assert (run, total) == (1, 147)
    outside = ~inside_mask(SHAPE, [((2, 10), (8, 16), (8, 16))])
    assert (logits.argmax(0)[outside] == 0).all()
    assert (logits.argmax(0)[~outside] != 0).any()


def test_region_logits_fall_back_to_the_whole_volume_and_say_how_many_windows_ran(capsys):
    data = volume(4)
    whole = sliding_window_logits(data, position_dependent_net, PATCH, 3, 0.5, 2, False, progress=False)
    with stage_times.case_record("c") as record:
        fallback = region_logits(data, position_dependent_net, Region(None, "the first pass found nothing"),
                                 LocateSettings(), PATCH, 3, 0.5, 2, False, progress=False)
        region_logits(data, position_dependent_net, Region((((0, 3), (0, 3), (0, 3)),), "1 box(es)"),
                      LocateSettings(margin_mm=5), PATCH, 3, 0.5, 2, False, progress=False)
    np.testing.assert_array_equal(fallback, whole)
    err = capsys.readouterr().err
    assert "locate: 147 of 147 windows run, 0 skipped (whole volume: the first pass found nothing)" in err
    assert "locate: 1 of 147 windows run, 146 skipped (windows, 1 box(es), margin 5 mm)" in err
    assert record.counts == {"windows run": 148, "windows skipped": 146}


def test_locator_finds_a_bright_object_through_its_coarse_network():
    data = np.zeros((1, 16, 32, 32), np.float32)
    data[0, 4:8, 20:26, 2:6] = 5.0

    def coarse_net(windows):  # foreground logit = the block mean
        return np.concatenate([np.zeros_like(windows), 4.0 * windows - 4.0], axis=1)

    locator = Locator(coarse_net, (8, 8, 8), (2, 2, 2), LocateSettings(margin_mm=0.0))
    region = locator.region(data, (1.0, 1.0, 1.0))
    assert region.boxes == (((4, 8), (20, 26), (2, 6)),)
    assert window_layout(SHAPE, PATCH, 0.5).starts  # sanity: the full layout exists


def test_locate_settings_join_the_run_identity_only_when_not_the_defaults(tmp_path):
    from src.config import Config
    from src.infer.prediction_outputs import run_identity

    model = tmp_path / "m.ckpt"
    model.write_bytes(b"weights")
    default = run_identity(Config(postprocess="none"), [model])
    assert "locate" not in default["settings"]
    crop = run_identity(Config(postprocess="none", locate="crop"), [model])
    off = run_identity(Config(postprocess="none", locate="off"), [model])
    wider = run_identity(Config(postprocess="none", locate_margin_mm=40.0), [model])
    assert len({str(default), str(crop), str(off), str(wider)}) == 4

"""Slab-by-slab counts and components equal the whole-volume computations they replace."""
import numpy as np
import pytest
from scipy import ndimage

from src.infer.case_report import (_hull_points, largest_component_diameter, max_feret_diameter, midline_position,
                                   overlay_slice_index, side_volumes)
from src.infer.slabs import Components, axis_profile, slab_bounds

LABELS = {"background": 0, "kidney": 1, "tumor": 2}


def blobs(shape=(29, 18, 21), seed=0, fill=0.3):
    """Random label map with many components, some crossing every slab border."""
    rng = np.random.default_rng(seed)
    label = np.zeros(shape, np.uint8)
    label[rng.random(shape) < fill] = 1
    label[rng.random(shape) < fill / 2] = 2
    label[3:25, 8:10, 4:6] = 2  # one long tumour through several slabs
    return label


def whole_volume_largest(mask):
    components, count = ndimage.label(mask)
    if count == 0:
        return None
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    return components == int(np.argmax(sizes))


def boundary_feret(mask, spacing):
    """The diameter as computed before slabs: hull of the eroded boundary's voxel centres plus corners."""
    box = ndimage.find_objects(mask.astype(np.uint8))[0]
    mask = mask[box]
    boundary = mask & ~ndimage.binary_erosion(mask)
    scale = np.asarray(spacing, dtype=np.float64)
    centres = _hull_points(np.argwhere(boundary) * scale)
    corners = np.array([[a, b, c] for a in (-.5, .5) for b in (-.5, .5) for c in (-.5, .5)]) * scale
    points = _hull_points((centres[:, None] + corners[None]).reshape(-1, 3))
    return float(np.sqrt(((points[:, None] - points[None]) ** 2).sum(-1).max()))


def test_slab_bounds_cover_the_axis():
    assert slab_bounds((10, 4, 4), 4) == [(0, 4), (4, 8), (8, 10)]
    assert slab_bounds((3, 4, 4), 100) == [(0, 3)]
    with pytest.raises(ValueError):
        slab_bounds((3, 4, 4), 0)


@pytest.mark.parametrize("rows", [1, 4, 7, 1000])
def test_components_pick_the_whole_volume_largest(rows):
    for seed, fill in ((0, 0.3), (1, 0.12), (2, 0.45)):
        label = blobs(seed=seed, fill=fill)
        for test in (lambda part: part > 0, lambda part: part == 2, lambda part: part == 1):
            components = Components(label, test, rows)
            expected = whole_volume_largest(test(label))
            assert components.count == ndimage.label(test(label))[1]
            mask = np.zeros(label.shape, bool)
            for start, stop, inside, _ in components.masks(components.largest()):
                mask[start:stop] = inside
            np.testing.assert_array_equal(mask, expected)


def test_ties_go_to_the_first_component_in_c_order():
    label = np.zeros((12, 5, 5), np.uint8)
    label[9:11, 1, 1] = 1     # two voxels, crosses the slab border at row 10 ... found first by slab 2's scan order
    label[2, 3, 3:5] = 1      # two voxels, earlier in C order: the winner
    components = Components(label, lambda part: part == 1, rows=5)
    won = np.zeros(label.shape, bool)
    for start, stop, inside, _ in components.masks(components.largest()):
        won[start:stop] = inside
    np.testing.assert_array_equal(won, whole_volume_largest(label == 1))
    assert Components(np.zeros((4, 3, 3), np.uint8), lambda part: part > 0, 2).largest() is None


@pytest.mark.parametrize("rows", [1, 5, 1000])
def test_report_in_slabs_equals_the_whole_volume(rows):
    label = blobs()
    spacing = (2.5, 0.8, 0.7)
    expected = boundary_feret(whole_volume_largest(label == 2), spacing)
    assert largest_component_diameter(label, 2, spacing, rows=rows) == pytest.approx(expected, rel=1e-12)
    assert max_feret_diameter(whole_volume_largest(label == 2), spacing) == pytest.approx(expected, rel=1e-12)
    assert largest_component_diameter(np.zeros((4, 3, 3), np.uint8), 2, spacing, rows=rows) is None
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        np.testing.assert_array_equal(axis_profile(label, axis, lambda part: part == 1, rows),
                                      np.count_nonzero(label == 1, axis=other))


def test_side_volumes_midline_and_overlay_from_slabs():
    label = blobs(seed=3)
    image = np.where(label > 0, 40.0, -1000.0).astype(np.float32)
    assert midline_position(image, 2) == pytest.approx(
        float(np.dot(np.arange(21), np.count_nonzero(image > -500, axis=(0, 1))) / np.count_nonzero(image > -500)))
    volumes = side_volumes(label, (2.0, 1.0, 1.0), LABELS, 2, 10.0, True)
    left = np.count_nonzero(label[:, :, 11:] == 1) * 0.002
    assert volumes["kidney"]["left"] == pytest.approx(left)
    assert overlay_slice_index(label, 0, LABELS) == int(np.argmax(np.count_nonzero(label == 2, axis=(1, 2))))


def test_single_voxels_and_lines_keep_their_diameter():
    one = np.zeros((3, 3, 3), bool)
    one[1, 1, 1] = True
    assert max_feret_diameter(one, (3.0, 4.0, 12.0)) == pytest.approx(13.0)
    line = np.zeros((1, 1, 9), bool)
    line[0, 0, 2:7] = True
    assert max_feret_diameter(line, (1.0, 1.0, 1.0)) == pytest.approx(np.sqrt(1 + 1 + 25))


def test_postprocessing_in_slabs_equals_whole_volume_components(monkeypatch):
    from src.infer import slabs
    from src.infer.postprocess import apply_postprocessing, largest_component

    label = blobs(seed=4, fill=0.25)
    expected = label.copy()
    keep = largest_component(expected > 0)
    expected[(expected > 0) & ~keep] = 0
    for value in (1, 2):
        keep = largest_component(expected == value)
        expected[(expected == value) & ~keep] = 0
    monkeypatch.setattr(slabs, "SLAB_VOXELS", 3 * 18 * 21)  # 3 rows per slab: 10 slabs
    spec = {"all_foreground": True, "per_class": [1, 2]}
    result = apply_postprocessing(label, spec)
    np.testing.assert_array_equal(result, expected)
    assert (label != result).any()  # the input is left alone by default ...
    in_place = label.copy()
    assert apply_postprocessing(in_place, spec, copy=False) is in_place  # ... and changed when asked
    np.testing.assert_array_equal(in_place, expected)


def test_compact_ct_only_when_exact(monkeypatch):
    from src.infer import case_report
    from src.infer.case_report import compact_ct, render_overlay

    monkeypatch.setattr(case_report, "CHUNK_VOXELS", 2 * 18 * 21)
    label = blobs(seed=5)
    image = np.asfortranarray(np.where(label > 0, 40.0, -1000.0).astype(np.float32))  # nibabel's layout
    image[7, 3, 4] = 3071.0
    compact = compact_ct(image)
    assert compact.dtype == np.int16
    np.testing.assert_array_equal(compact, image)
    assert midline_position(compact, 2) == midline_position(image, 2)
    spacing = (2.0, 1.0, 1.0)
    assert render_overlay(compact, label, spacing, LABELS, 0, 7, "t") == render_overlay(image, label, spacing, LABELS, 0, 7, "t")
    for bad in (0.5, 40000.0, -33000.0, np.nan):
        other = image.copy()
        other[20, 17, 20] = bad  # in the last chunk: every chunk is checked
        assert compact_ct(other) is other


def test_report_page_focus_point_in_slabs_equals_center_of_mass(monkeypatch):
    from src.infer import slabs
    from src.infer.report_page import focus_point

    monkeypatch.setattr(slabs, "SLAB_VOXELS", 3 * 18 * 21)
    for seed in (6, 7):
        label = blobs(seed=seed, fill=0.2)
        centre = ndimage.center_of_mass(whole_volume_largest(label == 2))
        assert focus_point(label, LABELS) == (tuple(int(round(c)) for c in centre), "largest tumour")
    only_kidney = (blobs(seed=8) == 1).astype(np.uint8)
    centre = ndimage.center_of_mass(whole_volume_largest(only_kidney > 0))
    assert focus_point(only_kidney, LABELS) == (tuple(int(round(c)) for c in centre), "largest labelled structure")
    assert focus_point(np.zeros((4, 6, 8), np.uint8), LABELS) == ((2, 3, 4), "volume centre")

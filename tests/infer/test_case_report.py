import json
import math

import matplotlib.image
import numpy as np
import pytest

from src.data.io import ImageMeta
from src.infer.case_report import (axial_axis, build_case_report, largest_component_diameter, lateral_axis,
                                   max_feret_diameter, midline_position, overlay_slice_index, report_line,
                                   side_volumes, write_case_outputs)

KITS_LABELS = {"background": 0, "kidney": 1, "tumor": 2}


def kits19_affine(slice_mm=3.0, pixel_mm=0.78):
    return [[0, 0, -pixel_mm, 0], [0, -pixel_mm, 0, 0], [-slice_mm, 0, 0, 0], [0, 0, 0, 1]]


def test_side_markers_follow_the_displayed_columns():
    from src.infer.case_report import side_markers

    assert side_markers(0, 2, True) == ("R", "L")          # KiTS: radiological view, patient left on the right
    assert side_markers(0, 2, False) == ("L", "R")
    assert side_markers(2, 0, False) is None               # left-right axis runs along the displayed rows


def test_axes_from_kits19_affine():
    assert lateral_axis(kits19_affine()) == (2, True)        # columns run towards the patient's left
    assert axial_axis(kits19_affine()) == 0
    ras = np.diag([1.0, 1.0, 1.0, 1.0])                       # first axis runs towards the right
    assert lateral_axis(ras) == (0, False)
    assert axial_axis(ras) == 2


def phantom():
    """Body columns 4..27 (midline 15.5); right kidney at columns 5-9, left kidney + tumour at 20-27."""
    image = np.full((6, 10, 32), -1000.0, np.float32)
    image[:, :, 4:28] = 40.0
    label = np.zeros(image.shape, np.uint8)
    label[1:5, 2:6, 5:10] = 1          # 4*4*5 = 80 voxels, low columns = patient's right (KiTS affine)
    label[1:5, 2:8, 20:24] = 1         # 96 voxels on the left
    label[2:4, 3:6, 24:28] = 2         # 24 voxels of tumour on the left
    label[5, 9, 8] = 2                 # 1 voxel of tumour on the right
    return image, label


def test_midline_and_side_volumes():
    image, label = phantom()
    assert midline_position(image, 2) == pytest.approx(15.5)
    assert midline_position(np.full((4, 4, 8), -1000.0), 2) == pytest.approx(3.5)
    spacing = (3.0, 0.5, 0.5)                                # 0.75 mm^3 per voxel
    volumes = side_volumes(label, spacing, KITS_LABELS, axis=2, midline=15.5, left_is_high=True)
    assert set(volumes) == {"kidney", "tumor"}
    assert volumes["kidney"]["right"] == pytest.approx(80 * 0.75e-3)
    assert volumes["kidney"]["left"] == pytest.approx(96 * 0.75e-3)
    assert volumes["tumor"]["left"] == pytest.approx(24 * 0.75e-3)
    assert volumes["tumor"]["right"] == pytest.approx(1 * 0.75e-3)
    flipped = side_volumes(label, spacing, KITS_LABELS, axis=2, midline=15.5, left_is_high=False)
    assert flipped["kidney"]["left"] == pytest.approx(80 * 0.75e-3)


def test_feret_diameter_of_boxes_and_single_voxels():
    spacing = (3.0, 0.8, 0.5)
    mask = np.zeros((8, 12, 20), bool)
    mask[2:5, 1:11, 3:19] = True                               # 3 x 10 x 16 voxels
    expected = math.sqrt((3 * 3.0) ** 2 + (10 * 0.8) ** 2 + (16 * 0.5) ** 2)
    assert max_feret_diameter(mask, spacing) == pytest.approx(expected)
    single = np.zeros((3, 3, 3), bool)
    single[1, 1, 1] = True
    assert max_feret_diameter(single, spacing) == pytest.approx(math.sqrt(9 + 0.64 + 0.25))
    assert max_feret_diameter(np.zeros((3, 3, 3), bool), spacing) == 0.0


def test_diameter_of_a_ball_is_close_to_its_size():
    radius = 10
    grid = np.indices((25, 25, 25)) - 12
    ball = (grid ** 2).sum(axis=0) <= radius ** 2
    assert 2 * radius + 0.5 < max_feret_diameter(ball, (1.0, 1.0, 1.0)) < 2 * radius + 1.8


def test_largest_component_decides_the_diameter():
    _, label = phantom()
    spacing = (3.0, 0.5, 0.5)
    assert largest_component_diameter(label, 2, spacing) == pytest.approx(math.sqrt(6 ** 2 + 1.5 ** 2 + 2 ** 2))
    assert largest_component_diameter(label, 3, spacing) is None


def test_overlay_slice_prefers_tumour_area():
    _, label = phantom()
    assert overlay_slice_index(label, 0, KITS_LABELS) in (2, 3)
    no_tumour = np.where(label == 2, 0, label)
    assert overlay_slice_index(no_tumour, 0, KITS_LABELS) in (1, 2, 3, 4)
    assert overlay_slice_index(np.zeros((6, 2, 2), np.uint8), 0, KITS_LABELS) == 3


def test_case_outputs_are_written(tmp_path):
    image, label = phantom()
    meta = ImageMeta(spacing=(3.0, 0.5, 0.5), shape=image.shape, affine=kits19_affine(3.0, 0.5),
                     header_b64="", source="case_00001/imaging.nii.gz")
    report = write_case_outputs("case_00001", image, label, meta, KITS_LABELS,
                                tmp_path / "case_00001_report.json", tmp_path / "case_00001_overlay.png")
    stored = json.loads((tmp_path / "case_00001_report.json").read_text())
    assert stored["volumes_ml"]["kidney"]["left"] == pytest.approx(96 * 0.75e-3)
    assert stored["largest_tumor_diameter_mm"] == pytest.approx(report["largest_tumor_diameter_mm"])
    assert stored["overlay_slice"] in (2, 3)
    png = matplotlib.image.imread(tmp_path / "case_00001_overlay.png")
    assert png.ndim == 3 and png.shape[0] > 100
    line = report_line(report)
    assert line.startswith("case_00001: kidney L 0.1 mL R 0.1 mL, tumor L 0.0 mL R 0.0 mL, largest tumour")
    assert not list(tmp_path.glob("*.tmp-*"))


def test_report_without_tumour_label():
    image, label = phantom()
    meta = ImageMeta(spacing=(1.0, 1.0, 1.0), shape=image.shape, affine=kits19_affine(1.0, 1.0),
                     header_b64="", source="x.nii.gz")
    report = build_case_report("x", image, np.minimum(label, 1), meta, {"background": 0, "kidney": 1})
    assert report["largest_tumor_diameter_mm"] is None
    assert report_line(report).endswith("no tumour")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_feret_diameter_matches_brute_force_on_irregular_and_flat_shapes(seed):
    from scipy.spatial.distance import pdist

    rng = np.random.default_rng(seed)
    spacing = (2.5, 0.7, 0.9)
    mask = rng.random((6, 9, 8)) < 0.3
    if seed == 1:
        mask[:] = False
        mask[3, 2:7, 1:6] = rng.random((5, 5)) < 0.7      # one slice only: coplanar centres
    if seed == 2:
        mask[:] = False
        mask[2, 4, 1:7] = True                            # a line: collinear centres
    corners = np.array([[a, b, c] for a in (-0.5, 0.5) for b in (-0.5, 0.5) for c in (-0.5, 0.5)])
    points = ((np.argwhere(mask)[:, None, :] + corners[None]).reshape(-1, 3)) * np.array(spacing)
    assert max_feret_diameter(mask, spacing) == pytest.approx(pdist(points).max())

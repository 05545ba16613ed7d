"""Surface areas and distances: closed-form shapes, brute force, and values of the reference package."""
import itertools
import math

import numpy as np
import pytest

from src.metrics.surface import (surface_dice_from_distances, surface_distances,
                                 surfel_area_table)

SPACING = (2.5, 0.8, 1.3)


def _cofactor_norm(spacing):
    s0, s1, s2 = spacing
    return math.sqrt((s1 * s2) ** 2 + (s0 * s2) ** 2 + (s0 * s1) ** 2)


def _box(shape, lo, hi):
    mask = np.zeros(shape, bool)
    mask[tuple(slice(a, b) for a, b in zip(lo, hi))] = True
    return mask


def _box_area(sides, spacing):
    """Marching-cubes area of a box of n0 x n1 x n2 voxels: flat faces, bevelled edges, cut corners."""
    (n0, n1, n2), (s0, s1, s2) = sides, spacing
    faces = 2 * ((n1 - 1) * (n2 - 1) * s1 * s2 + (n0 - 1) * (n2 - 1) * s0 * s2 + (n0 - 1) * (n1 - 1) * s0 * s1)
    edges = 2 * ((n0 - 1) * s0 * math.hypot(s1, s2) + (n1 - 1) * s1 * math.hypot(s0, s2)
                 + (n2 - 1) * s2 * math.hypot(s0, s1))
    return faces + edges + _cofactor_norm(spacing)


def test_single_voxel_surface_is_the_octahedron_through_its_face_centres():
    mask = _box((3, 3, 3), (1, 1, 1), (2, 2, 2))
    result = surface_distances(mask, mask, SPACING)
    assert len(result["areas_a"]) == 8
    # Each of the 8 faces has area |(s1 s2, s0 s2, s0 s1)| / 8.
    assert result["areas_a"].sum() == pytest.approx(_cofactor_norm(SPACING), rel=1e-12)


@pytest.mark.parametrize("sides,spacing", [((4, 5, 6), (3.0, 0.7, 1.1)), ((2, 7, 3), (0.5, 2.0, 0.9))])
def test_box_area_matches_closed_form(sides, spacing):
    mask = _box((10, 10, 10), (1, 2, 3), tuple(l + n for l, n in zip((1, 2, 3), sides)))
    total = surface_distances(mask, mask, spacing)["areas_a"].sum()
    assert total == pytest.approx(_box_area(sides, spacing), rel=1e-12)


def test_table_of_flat_and_empty_blocks():
    table = surfel_area_table(SPACING)
    s0, s1, s2 = SPACING
    assert table[0] == 0 and table[255] == 0
    # Bit 4a+2b+c: the four voxels with a = 0 form a plane normal to axis 0, and so on.
    assert table[0b00001111] == pytest.approx(s1 * s2)
    assert table[0b00110011] == pytest.approx(s0 * s2)
    assert table[0b01010101] == pytest.approx(s0 * s1)
    # Two voxels along axis 2: a rectangle of length s2 across the diagonal of the other two axes.
    assert table[0b00000011] == pytest.approx(s2 * math.hypot(s0, s1) / 2)


def test_table_gives_a_block_and_its_complement_the_same_surface():
    table = surfel_area_table((3.0, 0.78125, 0.9))
    np.testing.assert_allclose(table, table[255 - np.arange(256)], rtol=1e-12)
    assert (table[1:255] > 0).all()


def _surface_vertices(mask):
    """Brute force: vertex (i, j, k) touches voxels (i-1..i, j-1..j, k-1..k); mixed block = surface."""
    padded = np.pad(mask, 1)
    vertices = []
    for vertex in itertools.product(*(range(n + 1) for n in mask.shape)):
        block = padded[vertex[0]:vertex[0] + 2, vertex[1]:vertex[1] + 2, vertex[2]:vertex[2] + 2]
        if block.any() and not block.all():
            vertices.append(vertex)
    return np.array(vertices, float)


def test_distances_equal_brute_force_nearest_vertex():
    rng = np.random.default_rng(3)
    a = rng.random((6, 7, 5)) < 0.4
    b = rng.random((6, 7, 5)) < 0.4
    spacing = np.array([2.0, 0.6, 1.7])
    va, vb = _surface_vertices(a) * spacing, _surface_vertices(b) * spacing
    a_to_b = np.sqrt(((va[:, None, :] - vb[None, :, :]) ** 2).sum(-1)).min(1)
    b_to_a = np.sqrt(((vb[:, None, :] - va[None, :, :]) ** 2).sum(-1)).min(1)
    result = surface_distances(a, b, tuple(spacing))
    np.testing.assert_allclose(np.sort(result["distances_a_to_b"]), np.sort(a_to_b), atol=1e-12)
    np.testing.assert_allclose(np.sort(result["distances_b_to_a"]), np.sort(b_to_a), atol=1e-12)


def test_neighbouring_voxels_share_half_their_surface():
    spacing = (1.7, 0.6, 0.9)
    a = _box((5, 5, 5), (2, 2, 2), (3, 3, 3))
    b = _box((5, 5, 5), (3, 2, 2), (4, 3, 3))
    distances = surface_distances(a, b, spacing)
    # 4 of each voxel's 8 equal-area vertices lie on the shared face; the rest are s0 away.
    assert surface_dice_from_distances(distances, 1.69) == pytest.approx(0.5, abs=1e-12)
    assert surface_dice_from_distances(distances, 1.7) == pytest.approx(1.0, abs=1e-12)


def test_offset_cubes_partial_surface_dice_by_hand():
    """Two 6-voxel cubes, one shifted by one slice (3 mm); tolerance 1 mm < 3 mm but > in-plane steps.

    Cube A's lower cap is 3 mm from everything of B; on its upper cap only the 3 x 3 innermost flat
    vertices are >= 2 in-plane steps (>= 1.4 mm) from B's wall. Everything else touches B. B mirrors A.
    """
    spacing = (3.0, 0.7, 0.9)
    s0, s1, s2 = spacing
    a = _box((12, 12, 12), (2, 2, 2), (8, 8, 8))
    b = np.roll(a, 1, axis=0)
    total = _box_area((6, 6, 6), spacing)
    lower_cap = 25 * s1 * s2 + 5 * s1 * math.hypot(s0, s2) + 5 * s2 * math.hypot(s0, s1) \
        + 4 * _cofactor_norm(spacing) / 8
    expected = 1 - (lower_cap + 9 * s1 * s2) / total
    distances = surface_distances(a, b, spacing)
    assert distances["areas_a"].sum() == pytest.approx(total, rel=1e-12)
    assert surface_dice_from_distances(distances, 1.0) == pytest.approx(expected, rel=1e-12)
    assert surface_dice_from_distances(distances, 3.5) == pytest.approx(1.0, rel=1e-12)


def _sphere(shape, centre, radius_mm, spacing):
    grids = np.meshgrid(*[(np.arange(n) - c) * s for n, c, s in zip(shape, centre, spacing)], indexing="ij")
    return sum(g ** 2 for g in grids) <= radius_mm ** 2


def test_shifted_sphere_is_within_its_shift():
    spacing = (2.0, 0.8, 0.8)
    a = _sphere((16, 30, 30), (7, 14, 14), 9.0, spacing)
    b = np.roll(a, 1, axis=0)
    distances = surface_distances(a, b, spacing)
    # Every vertex of one surface has its copy, shifted by 2 mm, on the other.
    assert max(distances["distances_a_to_b"].max(), distances["distances_b_to_a"].max()) \
        == pytest.approx(2.0, abs=1e-12)
    assert surface_dice_from_distances(distances, 2.0 + 1e-9) == 1.0
    partial = surface_dice_from_distances(distances, 1.0)
    assert 0.0 < partial < 1.0
    swapped = surface_dice_from_distances(surface_distances(b, a, spacing), 1.0)
    assert swapped == pytest.approx(partial, abs=1e-12)


def test_identical_masks_have_zero_distances():
    mask = _sphere((12, 20, 20), (6, 9, 10), 6.0, (1.5, 0.7, 0.7))
    distances = surface_distances(mask, mask, (1.5, 0.7, 0.7))
    assert not distances["distances_a_to_b"].any() and not distances["distances_b_to_a"].any()
    assert surface_dice_from_distances(distances, 0.0) == 1.0


def test_empty_masks():
    empty, full = np.zeros((4, 4, 4), bool), _box((4, 4, 4), (1, 1, 1), (3, 3, 3))
    both = surface_distances(empty, empty, SPACING)
    assert all(v.size == 0 for v in both.values())
    assert math.isnan(surface_dice_from_distances(both, 1.0))
    one = surface_distances(full, empty, SPACING)
    assert np.isinf(one["distances_a_to_b"]).all() and one["areas_b"].size == 0
    assert surface_dice_from_distances(one, 100.0) == 0.0


def test_rejects_mismatched_inputs():
    with pytest.raises(ValueError):
        surface_distances(np.zeros((3, 3, 3)), np.zeros((3, 3, 4)), SPACING)
    with pytest.raises(ValueError):
        surface_distances(np.zeros((3, 3, 3)), np.zeros((3, 3, 3)), (1.0, 1.0))


def reference_masks(kind):
    """Masks for the comparison with DeepMind's ``surface_distance`` (rng streams are version-stable)."""
    rng = np.random.default_rng(2024 + kind)
    if kind == 0:  # salt-and-pepper: nearly all 256 block codes, ambiguous faces included
        shape = (9, 11, 10)
        return rng.random(shape) < 0.15, rng.random(shape) < 0.5
    shape = (14, 24, 22)
    a = _sphere(shape, (6.5, 11, 10), 7.0, (1.6, 0.7, 0.8)) & (rng.random(shape) < 0.97)
    b = _sphere(shape, (7.2, 12, 10.5), 6.5, (1.6, 0.7, 0.8)) | (rng.random(shape) < 0.01)
    return a, b


# Produced by surface_distance 0.1 (pip `surface-distance`, numpy 1.23.5, scipy 1.13.1) as
# compute_surface_dice_at_tolerance(compute_surface_distances(a, b, spacing), tolerance).
REFERENCE_SURFACE_DICE = [
    # (kind, spacing, tolerance_mm, value)
    (0, (2.5, 0.8, 1.3), 1.0330772532390826, 0.8836712406039181),
    (0, (2.5, 0.8, 1.3), 0.5, 0.715944379580168),
    (0, (0.7, 3.0, 0.9), 1.1328796488598762, 0.945973486832631),
    (1, (1.6, 0.7, 0.8), 1.0330772532390826, 0.761386080297827),
    (1, (1.6, 0.7, 0.8), 1.1498198361434828, 0.8233789086448405),
    (1, (3.0, 0.78125, 0.78125), 1.1328796488598762, 0.8285129666463623),
    (1, (3.0, 0.78125, 0.78125), 0.5, 0.5165483826516674),
]


@pytest.mark.parametrize("kind,spacing,tolerance,expected", REFERENCE_SURFACE_DICE)
def test_matches_reference_package(kind, spacing, tolerance, expected):
    a, b = reference_masks(kind)
    distances = surface_distances(a, b, spacing)
    assert surface_dice_from_distances(distances, tolerance) == pytest.approx(expected, abs=1e-9)

"""KiTS19 / KiTS21 per-case scores: Dice, HEC construction, per-HEC tolerances, empty classes."""
import numpy as np
import pytest

from src.metrics.kits import (KITS19_KEYS, KITS21_COLUMNS, KITS21_SD_TOLERANCES_MM, case_scores,
                              dice, kits19_scores, kits21_scores, surface_dice)
from src.metrics.surface import surface_dice_from_distances, surface_distances

SPACING = (3.0, 0.8, 0.8)


def _line(values, shape=(3, 3, 24)):
    """Label map whose middle row holds ``values`` (zero-padded): easy voxel counting by hand."""
    labels = np.zeros(shape, np.int16)
    labels[1, 1, : len(values)] = values
    return labels


def test_dice_counts():
    a = _line([1, 1, 1, 0]) > 0
    b = _line([0, 0, 1, 1]) > 0
    assert dice(a, b) == pytest.approx(2 * 1 / (3 + 2))
    assert dice(a, a) == 1.0


def test_dice_of_empty_masks():
    empty, some = np.zeros((2, 2, 2), bool), np.ones((2, 2, 2), bool)
    assert dice(empty, empty) == 1.0
    assert dice(empty, some) == 0.0 and dice(some, empty) == 0.0
    with pytest.raises(ValueError):
        dice(empty, np.zeros((2, 2, 3), bool))


def test_surface_dice_empty_conventions_and_value():
    empty = np.zeros((6, 6, 6), bool)
    cube = empty.copy()
    cube[2:4, 2:4, 2:4] = True
    assert surface_dice(empty, empty, SPACING, 1.0) == 1.0
    assert surface_dice(cube, empty, SPACING, 1.0) == 0.0
    assert surface_dice(empty, cube, SPACING, 1.0) == 0.0
    shifted = np.roll(cube, 1, axis=2)
    expected = surface_dice_from_distances(surface_distances(shifted, cube, SPACING), 0.5)
    assert surface_dice(shifted, cube, SPACING, 0.5) == pytest.approx(expected)
    assert 0.0 < expected < 1.0


def test_kits19_scores_by_hand():
    ref = _line([1, 1, 1, 1, 1, 1, 2, 2, 2, 2])
    pred = _line([0, 0, 1, 1, 1, 1, 1, 1, 2, 2])
    scores = kits19_scores(pred, ref)
    assert set(scores) == set(KITS19_KEYS)
    assert scores["kits19_kidney_dice"] == pytest.approx(2 * 8 / (8 + 10))
    assert scores["kits19_tumor_dice"] == pytest.approx(2 * 2 / (2 + 4))
    assert scores["kits19_composite"] == pytest.approx((16 / 18 + 4 / 6) / 2)


def test_kits19_counts_any_label_as_kidney_but_only_2_as_tumor():
    ref = _line([1, 2, 2])
    pred = _line([3, 3, 3])
    scores = kits19_scores(pred, ref)
    assert scores["kits19_kidney_dice"] == 1.0
    assert scores["kits19_tumor_dice"] == 0.0


def _two_spheres_case():
    """Kidney blob with a tumour at one end and a cyst at the other, well over 2 mm apart."""
    shape = (12, 30, 30)
    grid = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, SPACING)], indexing="ij")

    def ball(centre, radius):
        return sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius ** 2

    ref = np.zeros(shape, np.int16)
    ref[ball((18, 12, 12), 10)] = 1
    tumor, cyst = ball((18, 6, 12), 3.5), ball((18, 18, 12), 3.5)
    ref[tumor], ref[cyst] = 2, 3
    return ref, tumor, cyst


def test_kits21_hecs_nest_kidney_masses_tumor():
    ref, tumor, cyst = _two_spheres_case()
    pred = ref.copy()
    pred[tumor], pred[cyst] = 3, 2  # tumour and cyst swapped: same kidney and masses, wrong tumour
    scores = kits21_scores(pred, ref, SPACING)
    assert list(scores) == list(KITS21_COLUMNS)
    for hec in ("kidney", "masses"):
        assert scores[f"Dice_{hec}"] == 1.0 and scores[f"SD_{hec}"] == 1.0
    assert scores["Dice_tumor"] == 0.0
    assert scores["SD_tumor"] == 0.0


def test_kits21_on_kits19_labels_makes_masses_equal_tumor():
    ref, tumor, _ = _two_spheres_case()
    ref[ref == 3] = 1
    pred = np.roll(ref, 1, axis=1)
    scores = kits21_scores(pred, ref, SPACING)
    assert 0.0 < scores["Dice_tumor"] < 1.0
    assert scores["Dice_masses"] == scores["Dice_tumor"]
    # No distance on this grid falls between the two tolerances (1.133 and 1.150 mm).
    assert scores["SD_masses"] == scores["SD_tumor"]
    assert scores["SD_tumor"] == surface_dice(pred == 2, ref == 2, SPACING, KITS21_SD_TOLERANCES_MM["tumor"])


def test_each_hec_uses_its_own_tolerance():
    # One voxel moved by one 1.1 mm slice: beyond the kidney tolerance (1.033 mm), within the others.
    spacing = (1.1, 2.0, 2.0)
    ref, pred = np.zeros((5, 3, 3), np.int16), np.zeros((5, 3, 3), np.int16)
    ref[2, 1, 1], pred[3, 1, 1] = 2, 2
    scores = kits21_scores(pred, ref, spacing)
    assert scores["SD_kidney"] == pytest.approx(0.5)
    assert scores["SD_masses"] == pytest.approx(1.0)
    assert scores["SD_tumor"] == pytest.approx(1.0)
    assert scores["Dice_kidney"] == scores["Dice_masses"] == scores["Dice_tumor"] == 0.0


def test_class_absent_from_both_scores_one():
    ref = _line([1, 1, 1, 1])
    pred = _line([0, 1, 1, 1, 1])
    scores = kits21_scores(pred, ref, SPACING)
    assert scores["Dice_tumor"] == scores["SD_tumor"] == 1.0
    assert scores["Dice_masses"] == scores["SD_masses"] == 1.0
    assert scores["Dice_kidney"] == pytest.approx(2 * 3 / 8)


def test_predicting_a_class_absent_from_the_reference_scores_zero():
    ref = _line([1, 1, 1, 1])
    pred = _line([1, 1, 2, 1])
    scores = kits21_scores(pred, ref, SPACING)
    assert scores["Dice_tumor"] == scores["SD_tumor"] == 0.0
    assert scores["Dice_kidney"] == scores["SD_kidney"] == 1.0


def test_case_scores_combine_both_challenges_and_ignore_empty_border():
    ref, tumor, _ = _two_spheres_case()
    pred = np.roll(ref, (1, -2, 1), axis=(0, 1, 2))
    scores = case_scores(pred, ref, SPACING)
    assert set(scores) == set(KITS19_KEYS) | set(KITS21_COLUMNS)
    assert scores["kits19_kidney_dice"] == scores["Dice_kidney"]
    big_ref, big_pred = np.zeros((20, 50, 45), np.int16), np.zeros((20, 50, 45), np.int16)
    big_ref[5:17, 9:39, 4:34], big_pred[5:17, 9:39, 4:34] = ref, pred
    assert case_scores(big_pred, big_ref, SPACING) == pytest.approx(scores, abs=1e-12)


def test_case_scores_of_empty_maps():
    empty = np.zeros((4, 4, 4), np.int16)
    scores = case_scores(empty, empty, SPACING)
    assert all(value == 1.0 for value in scores.values())


def test_rejects_mismatched_shapes_and_spacing():
    with pytest.raises(ValueError):
        kits21_scores(np.zeros((3, 3, 3)), np.zeros((3, 3, 4)), SPACING)
    with pytest.raises(ValueError):
        kits19_scores(np.zeros((3, 3, 3)), np.zeros((3, 4, 3)))
    with pytest.raises(ValueError):
        kits21_scores(np.zeros((3, 3, 3)), np.zeros((3, 3, 3)), (1.0, 1.0))


def reference_label_maps():
    """A KiTS21-like pair for the comparison with the official evaluation (rng stream version-stable)."""
    rng = np.random.default_rng(21)
    ref, _, _ = _two_spheres_case()
    pred = np.roll(ref, (0, 1, -1), axis=(0, 1, 2))
    flips = rng.random(ref.shape) < 0.02
    pred[flips] = rng.integers(0, 4, int(flips.sum()))
    return pred, ref


# The official KiTS21 per-HEC computation (kits21/evaluation/metrics.py compute_metrics_for_label, which
# calls DeepMind's surface_distance 0.1), run on reference_label_maps() with numpy 1.23.5 / scipy 1.13.1.
OFFICIAL_KITS21 = {
    "Dice_kidney": 0.8874497543546226,
    "Dice_masses": 0.576271186440678,
    "Dice_tumor": 0.591304347826087,
    "SD_kidney": 0.8715287736247305,
    "SD_masses": 0.6793588719591283,
    "SD_tumor": 0.7081855021176512,
}


def test_matches_official_kits21_computation():
    pred, ref = reference_label_maps()
    assert kits21_scores(pred, ref, SPACING) == pytest.approx(OFFICIAL_KITS21, abs=1e-9)

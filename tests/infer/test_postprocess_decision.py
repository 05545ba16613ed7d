"""The postprocessing decision: each step kept only when it helps and hurts no class, step 3's floor, and
the count-based scores equal to those of the candidate label maps."""
import numpy as np
import pytest

import src.infer.postprocess as postprocess
import src.infer.postprocess_decision as postprocess_decision
from src.errors import UserError
from src.infer.postprocess import apply_postprocessing, spec_summary
from src.infer.postprocess_decision import component_floor_ml, decide_postprocessing
from src.metrics.kits import dice
from tests.infer.test_postprocess import MM, two_kidneys_and_a_speck


def test_decision_keeps_only_steps_that_help():
    reference = two_kidneys_and_a_speck()
    reference[9, 19, 19] = 0
    prediction = two_kidneys_and_a_speck()   # both kidneys right, plus the false tumour speck
    spec = decide_postprocessing([(prediction, reference, MM)], labels=[1, 2])
    # all-foreground LCC would delete the left kidney: rejected; tumour LCC removes the speck: kept
    assert spec["all_foreground"] is False
    assert spec["per_class"] == [2]
    assert spec["dice_per_class_lcc"]["2"] == pytest.approx(1.0)
    assert spec["dice_raw"]["2"] < 1.0


def test_decision_accepts_foreground_lcc_when_there_is_one_organ():
    reference = np.zeros((8, 8, 8), np.uint8)
    reference[1:5, 1:5, 1:5] = 1
    reference[2:3, 2:3, 2:3] = 2
    prediction = reference.copy()
    prediction[7, 7, 7] = 1                   # speck of kidney far away
    spec = decide_postprocessing(iter([(prediction, reference, MM), (reference, reference, MM)]), labels=[1, 2])
    assert spec["all_foreground"] is True and spec["per_class"] == [] and spec["cases"] == 2


def test_decision_never_trades_a_kidney_for_a_tumour():
    reference = np.zeros((10, 20, 20), np.uint8)
    reference[2:8, 2:8, 2:8] = 1            # right kidney
    reference[3:5, 3:5, 3:5] = 2            # its tumour
    reference[2:4, 14:16, 14:16] = 1        # a small left kidney: a component of its own
    prediction = reference.copy()
    prediction[8:10, 17:19, 0:1] = 2        # a 4-voxel false tumour far from both kidneys
    spec = decide_postprocessing([(prediction, reference, MM)], labels=[1, 2])
    raw, fg_lcc = spec["dice_raw"], spec["dice_all_foreground_lcc"]
    # step 1 deletes the left kidney and the false tumour: the mean over classes goes up ...
    assert fg_lcc["1"] + fg_lcc["2"] > raw["1"] + raw["2"] and fg_lcc["1"] < raw["1"]
    # ... but the kidney loses, so it is rejected; the tumour's own LCC clears the false tumour instead
    assert spec["all_foreground"] is False and spec["per_class"] == [2]
    assert np.array_equal(apply_postprocessing(prediction, spec, MM), reference)


def test_a_floor_that_lowers_another_class_is_rejected():
    reference = np.zeros((12, 12, 12), np.uint8)
    reference[1:11, 1:11, 1:11] = 1
    reference[2:4, 2:4, 2:4] = 2             # two real tumours of 8 voxels: the tumour LCC would lose one
    reference[7:9, 7:9, 7:9] = 2
    reference[5, 5, 5] = 0                   # a vessel inside the kidney
    prediction = reference.copy()
    prediction[5, 5, 5] = 2                  # taken for a one-voxel tumour
    spec = decide_postprocessing([(prediction, reference, MM)], [1, 2], floors_ml={"2": 0.0015})
    # the floor clears the false tumour (tumour Dice 1) by relabelling it kidney: a false kidney voxel
    assert spec["dice_min_component"]["2"] == pytest.approx(1.0) and spec["dice_raw"]["2"] < 1.0
    assert spec["per_class"] == [] and spec["min_component_ml"] == {}


def test_decision_rejects_mismatched_shapes_and_empty_input():
    with pytest.raises(UserError):
        decide_postprocessing([(np.zeros((2, 2, 2)), np.zeros((2, 2, 3)), MM)], [1])
    with pytest.raises(UserError):
        decide_postprocessing([], [1])


def test_floor_is_half_the_smallest_main_object_of_the_references():
    big, small = two_kidneys_and_a_speck(), two_kidneys_and_a_speck()
    small[3:5, 3:5, 3:5] = 1
    small[3, 3, 3] = 2                                   # smallest tumour: 1 voxel; its speck is 1 voxel too
    floors = component_floor_ml([big, small, np.zeros_like(big)], (2.0, 1.0, 1.0), [1, 2, 3])
    # kidney: the largest kidney component is 6^3 - 8 = 208 voxels in big and 216 in small; 2 uL voxels
    assert floors == {"1": pytest.approx(0.5 * 208 * 0.002), "2": pytest.approx(0.5 * 1 * 0.002)}


def test_decision_keeps_a_floor_that_clears_a_tumour_free_case():
    with_tumour = two_kidneys_and_a_speck()
    with_tumour[9, 19, 19] = 0
    tumour_free = with_tumour.copy()
    tumour_free[3:5, 3:5, 3:5] = 1
    speckled = tumour_free.copy()
    speckled[5, 5, 5] = 2                               # a lone false tumour: LCC cannot remove it
    cases = [(with_tumour, with_tumour, MM), (speckled, tumour_free, MM)]
    spec = decide_postprocessing(cases, [1, 2], floors_ml={"2": 0.004, "1": 0.05})
    assert spec["per_class"] == [] and spec["min_component_ml"] == {"2": 0.004}
    assert spec["dice_raw"]["2"] == pytest.approx(0.5) and spec["dice_min_component"]["2"] == pytest.approx(1.0)
    # the kidney floor (50 voxels) deletes nothing here, so it does not raise the Dice: not kept
    assert spec["dice_min_component"]["1"] == pytest.approx(spec["dice_raw"]["1"])
    out = apply_postprocessing(speckled, spec, MM)
    assert np.array_equal(out, tumour_free)
    assert "label 2 components under 0.004 mL removed" in spec_summary(spec)
    with pytest.raises(UserError, match="spacing"):
        apply_postprocessing(speckled, spec)
    # a floor above the real tumour would delete it: rejected
    assert decide_postprocessing(cases, [1, 2], floors_ml={"2": 0.5})["min_component_ml"] == {}


# the straightforward method: every candidate label map made and compared with the reference

def reference_case_scores(pred, ref, labels, floors_ml, spacing):
    def dices(variant):
        return np.array([dice(variant == c, ref == c) for c in labels])

    scores = {}
    for base, base_pred in (("raw", pred), ("fg", apply_postprocessing(pred, {"all_foreground": True}))):
        scores[base] = dices(base_pred)
        for c in labels:
            lcc = apply_postprocessing(base_pred, {"all_foreground": False, "per_class": [c]})
            scores[f"{base}+lcc{c}"] = dices(lcc)
            if str(c) in floors_ml:
                floor = {"min_component_ml": {str(c): floors_ml[str(c)]}}
                scores[f"{base}+floor{c}"] = dices(apply_postprocessing(base_pred, floor, spacing))
                scores[f"{base}+lcc{c}+floor{c}"] = dices(apply_postprocessing(lcc, floor, spacing))
    return scores


def random_label_map(rng, shape=(10, 14, 14), labels=(1, 2), blobs=6):
    """Boxes of random labels, sizes and places: touching, nested and lone components, some single voxels."""
    label = np.zeros(shape, np.uint8)
    for _ in range(blobs):
        size = rng.integers(1, 6, size=3)
        corner = [int(rng.integers(0, s)) for s in shape]
        label[tuple(slice(c, c + int(n)) for c, n in zip(corner, size))] = rng.choice(labels)
    specks = rng.random(shape) < 0.01
    label[specks] = rng.choice(labels, size=int(specks.sum()))
    return label


@pytest.mark.parametrize("seed", range(12))
def test_scores_and_decision_equal_those_of_the_candidate_label_maps(seed, monkeypatch):
    rng = np.random.default_rng(seed)
    labels = [1, 2, 3] if seed % 3 == 0 else [1, 2]
    cases = []
    for _ in range(3):
        reference = random_label_map(rng, labels=labels)
        prediction = reference.copy() if rng.random() < 0.3 else random_label_map(rng, labels=labels)
        prediction[random_label_map(rng, labels=labels, blobs=3) > 0] = rng.choice(labels + [0])
        cases.append((prediction, reference, (1.0, float(rng.choice([1.0, 2.0])), 1.0)))
    floors = {"1": 0.02, "2": float(rng.choice([0.004, 0.03]))}
    for pred, ref, spacing in cases:
        expected = reference_case_scores(pred, ref, labels, floors, spacing)
        got = postprocess_decision._case_scores(pred, ref, labels, floors, spacing)
        assert got.keys() == expected.keys()
        for name in expected:
            assert np.array_equal(got[name], expected[name]), name   # the same figures, not approximately
    decided = decide_postprocessing(cases, labels, floors)
    monkeypatch.setattr(postprocess_decision, "_case_scores", reference_case_scores)
    assert decided == decide_postprocessing(cases, labels, floors)


def test_the_decision_makes_no_candidate_label_map(monkeypatch):
    def refused(*args, **kwargs):
        raise AssertionError("a candidate label map was made")

    for module in (postprocess, postprocess_decision):
        monkeypatch.setattr(module, "apply_postprocessing", refused, raising=False)
        monkeypatch.setattr(module, "remove_small_components", refused, raising=False)
    prediction = two_kidneys_and_a_speck()
    spec = decide_postprocessing([(prediction, two_kidneys_and_a_speck(), MM)], [1, 2], floors_ml={"2": 0.004})
    assert spec["cases"] == 1

import hashlib
import json
import shutil

import numpy as np
import pytest

from src.errors import UserError
from src.metrics.kits import dice
from src.infer.postprocess import (apply_postprocessing, component_floor_ml, decide_postprocessing,
                                   largest_component, remove_small_components, spec_summary,
                                   lcc_everything, load_postprocessing, resolve_postprocessing,
                                   save_postprocessing)


def test_largest_component_uses_face_connectivity():
    mask = np.zeros((6, 6, 6), bool)
    mask[0:2, 0:2, 0:2] = True        # 8 voxels
    mask[3:6, 3:6, 3:5] = True        # 18 voxels
    mask[2, 2, 2] = True              # touches the first block only diagonally: its own component
    keep = largest_component(mask)
    assert keep.sum() == 18 and keep[4, 4, 4] and not keep[0, 0, 0] and not keep[2, 2, 2]
    assert not largest_component(np.zeros((3, 3, 3), bool)).any()


MM = (1.0, 1.0, 1.0)  # 1 voxel = 0.001 mL


def two_kidneys_and_a_speck():
    label = np.zeros((10, 20, 20), np.uint8)
    label[2:8, 2:8, 2:8] = 1            # right kidney
    label[3:5, 3:5, 3:5] = 2            # tumour inside it
    label[2:7, 12:17, 12:17] = 1        # left kidney (smaller)
    label[9, 19, 19] = 2                # isolated false-positive tumour speck
    return label


def test_apply_postprocessing_steps():
    label = two_kidneys_and_a_speck()
    assert apply_postprocessing(label, None) is label
    fg_only = apply_postprocessing(label, {"all_foreground": True, "per_class": []})
    assert (fg_only[2:7, 12:17, 12:17] == 0).all() and fg_only[9, 19, 19] == 0
    assert (fg_only[2:8, 2:8, 2:8] == label[2:8, 2:8, 2:8]).all()
    tumour_only = apply_postprocessing(label, {"all_foreground": False, "per_class": [2]})
    assert tumour_only[9, 19, 19] == 0 and (tumour_only[2:7, 12:17, 12:17] == 1).all()
    assert (tumour_only == 2).sum() == 8
    assert label[9, 19, 19] == 2  # input untouched


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


def test_small_components_take_the_label_around_them():
    label = two_kidneys_and_a_speck()
    label[5, 5, 5] = 2                                   # a 1-voxel tumour speck inside the right kidney
    out = remove_small_components(label, 2, min_voxels=2)
    assert out[5, 5, 5] == 1                             # kidney all around: no hole
    assert out[9, 19, 19] == 0                           # background around the corner speck
    assert (out[3:5, 3:5, 3:5] == 2).all()               # the 8-voxel tumour is kept
    assert label[5, 5, 5] == 2                           # input untouched
    assert (remove_small_components(label, 2, min_voxels=9) == 2).sum() == 0


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


def fake_checkpoint(path, content: bytes = b"weights"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content + str(path).encode())   # every file distinct unless copied
    return path


def test_resolve_modes_and_files(tmp_path):
    labels = [1, 2]
    assert resolve_postprocessing("none", [tmp_path / "a.ckpt"], labels)[0] is None
    assert resolve_postprocessing("lcc", [tmp_path / "a.ckpt"], labels)[0] == lcc_everything(labels)
    spec, source = resolve_postprocessing("auto", [tmp_path / "a.ckpt"], labels)
    assert spec is None and "no postprocessing.json" in source
    assert resolve_postprocessing("auto", [], labels)[0] is None

    folds = [tmp_path / f"fold_{i}" for i in range(2)]
    ckpts = [fake_checkpoint(folder / "checkpoint_best.ckpt") for folder in folds]
    for i, (folder, ckpt) in enumerate(zip(folds, ckpts)):
        save_postprocessing({"all_foreground": i == 0, "per_class": [2] if i == 0 else [1, 2]},
                            folder / "postprocessing.json", models=[ckpt])
    spec, _ = resolve_postprocessing("auto", ckpts, labels)
    assert spec == {"all_foreground": False, "per_class": [2], "min_component_ml": {}}  # what both folds agree on
    spec, _ = resolve_postprocessing("auto", ckpts[1:], labels)
    assert spec["per_class"] == [1, 2]
    for folder, ckpt, floors in zip(folds, ckpts, ({"2": 1.0}, {"2": 0.5, "1": 3.0})):
        save_postprocessing({"all_foreground": False, "per_class": [], "min_component_ml": floors},
                            folder / "postprocessing.json", models=[ckpt])
    spec, _ = resolve_postprocessing("auto", ckpts, labels)
    assert spec["min_component_ml"] == {"2": 0.5}   # a floor both folds kept, the smaller one
    save_postprocessing({"all_foreground": True, "per_class": []}, tmp_path / "postprocessing.json", models=ckpts)
    spec, source = resolve_postprocessing("auto", ckpts, labels)
    assert spec["all_foreground"] is True and source == str(tmp_path / "postprocessing.json")


def test_a_decision_records_the_digests_of_its_models(tmp_path):
    ckpt = fake_checkpoint(tmp_path / "fold_0" / "checkpoint_best.ckpt")
    path = save_postprocessing({"all_foreground": False, "per_class": [2]}, ckpt.parent / "postprocessing.json",
                               models=[ckpt])
    recorded = json.loads(path.read_text())["models"]
    assert recorded == [{"file": str(ckpt.resolve()),
                         "digest": "sha256:" + hashlib.sha256(ckpt.read_bytes()).hexdigest()}]
    assert load_postprocessing(path, models=[ckpt])["per_class"] == [2]
    # a byte-identical copy elsewhere is the same model
    copy = tmp_path / "elsewhere" / "model.ckpt"
    copy.parent.mkdir()
    shutil.copy(ckpt, copy)
    assert load_postprocessing(path, models=[copy])["per_class"] == [2]


def test_a_decision_is_refused_for_a_retrained_checkpoint(tmp_path):
    ckpt = fake_checkpoint(tmp_path / "fold_0" / "checkpoint_best.ckpt")
    decision = save_postprocessing({"all_foreground": False, "per_class": [2]},
                                   ckpt.parent / "postprocessing.json", models=[ckpt])
    ckpt.write_bytes(b"retrained weights")
    for read in (lambda: load_postprocessing(decision, models=[ckpt]),
                 lambda: resolve_postprocessing("auto", [ckpt], [1, 2])):
        with pytest.raises(UserError) as refused:
            read()
        message = str(refused.value)
        assert "\n" not in message and str(decision) in message and str(ckpt.resolve()) in message
        assert "--postprocess auto" in message and "--postprocess none" in message
    # none and lcc never read the file
    assert resolve_postprocessing("none", [ckpt], [1, 2])[0] is None
    assert resolve_postprocessing("lcc", [ckpt], [1, 2])[0] == lcc_everything([1, 2])


def test_a_cross_validation_decision_covers_its_folds_only(tmp_path):
    ckpts = [fake_checkpoint(tmp_path / f"fold_{i}" / "checkpoint_best.ckpt") for i in range(3)]
    save_postprocessing({"all_foreground": True, "per_class": []}, tmp_path / "postprocessing.json",
                        models=ckpts[:2])
    assert resolve_postprocessing("auto", ckpts[:2], [1, 2])[0]["all_foreground"] is True
    with pytest.raises(UserError, match="not for .*fold_2"):
        resolve_postprocessing("auto", ckpts, [1, 2])
    # a fold's own decision made for another fold's checkpoint is refused too
    save_postprocessing({"all_foreground": True, "per_class": []}, ckpts[2].parent / "postprocessing.json",
                        models=[ckpts[0]])
    with pytest.raises(UserError, match="decided for .*fold_0"):
        resolve_postprocessing("auto", ckpts[2:], [1, 2])


def test_a_decision_without_models_is_refused_when_models_are_named(tmp_path):
    ckpt = fake_checkpoint(tmp_path / "checkpoint_best.ckpt")
    old = tmp_path / "postprocessing.json"
    old.write_text(json.dumps({"all_foreground": False, "per_class": [2]}))   # an older version's file
    assert load_postprocessing(old)["per_class"] == [2]
    with pytest.raises(UserError, match="does not record the models .*--postprocess auto.*--postprocess none"):
        load_postprocessing(old, models=[ckpt])
    with pytest.raises(UserError, match="does not record the models"):
        resolve_postprocessing("auto", [ckpt], [1, 2])


def test_load_rejects_malformed_files(tmp_path):
    path = tmp_path / "postprocessing.json"
    path.write_text(json.dumps({"per_class": [1]}))
    with pytest.raises(UserError, match="all_foreground"):
        load_postprocessing(path)
    path.write_text(json.dumps({"all_foreground": False, "per_class": [], "min_component_ml": {"2": -1}}))
    with pytest.raises(UserError, match="min_component_ml"):
        load_postprocessing(path)
    path.write_text("{not json")
    with pytest.raises(UserError):
        load_postprocessing(path)


# ---------------------------------------------------------------- the decision's scores, checked against
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
    import src.infer.postprocess as postprocess

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
        got = postprocess._case_scores(pred, ref, labels, floors, spacing)
        assert got.keys() == expected.keys()
        for name in expected:
            assert np.array_equal(got[name], expected[name]), name   # the same figures, not approximately
    decided = decide_postprocessing(cases, labels, floors)
    monkeypatch.setattr(postprocess, "_case_scores", reference_case_scores)
    assert decided == decide_postprocessing(cases, labels, floors)


def test_the_decision_makes_no_candidate_label_map(monkeypatch):
    import src.infer.postprocess as postprocess

    def refused(*args, **kwargs):
        raise AssertionError("a candidate label map was made")

    monkeypatch.setattr(postprocess, "apply_postprocessing", refused)
    monkeypatch.setattr(postprocess, "remove_small_components", refused)
    prediction = two_kidneys_and_a_speck()
    spec = decide_postprocessing([(prediction, two_kidneys_and_a_speck(), MM)], [1, 2], floors_ml={"2": 0.004})
    assert spec["cases"] == 1

import hashlib
import json
import shutil

import numpy as np
import pytest

from src.errors import UserError
from src.infer.postprocess import (apply_postprocessing, largest_component, lcc_everything, load_postprocessing,
                                   remove_small_components, resolve_postprocessing, save_postprocessing)


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


def test_small_components_take_the_label_around_them():
    label = two_kidneys_and_a_speck()
    label[5, 5, 5] = 2                                   # a 1-voxel tumour speck inside the right kidney
    out = remove_small_components(label, 2, min_voxels=2)
    assert out[5, 5, 5] == 1                             # kidney all around: no hole
    assert out[9, 19, 19] == 0                           # background around the corner speck
    assert (out[3:5, 3:5, 3:5] == 2).all()               # the 8-voxel tumour is kept
    assert label[5, 5, 5] == 2                           # input untouched
    assert (remove_small_components(label, 2, min_voxels=9) == 2).sum() == 0


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

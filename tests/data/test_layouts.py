import json
import os

import pytest

from src.data.layouts import CaseFiles, dataset_labels, dataset_tasks, detect_layout, find_cases
from src.errors import UserError
from tests.data.test_io import phantom, write_kits_case, write_mots_raw, write_nifti


def test_kits19_layout(tmp_path):
    for i in (2, 0, 1):
        write_kits_case(tmp_path, f"case_{i:05d}", seed=i)
    write_kits_case(tmp_path, "case_00210", with_label=False)  # KiTS19 test cases have no segmentation
    (tmp_path / "notes.txt").write_text("not a case")
    assert detect_layout(tmp_path) == "kits19"
    cases = find_cases(tmp_path)
    assert [c.case_id for c in cases] == ["case_00000", "case_00001", "case_00002", "case_00210"]
    assert cases[0] == CaseFiles("case_00000", tmp_path / "case_00000" / "imaging.nii.gz",
                                 tmp_path / "case_00000" / "segmentation.nii.gz", None)
    assert cases[-1].label is None
    assert dataset_labels(tmp_path) == {"background": 0, "kidney": 1, "tumor": 2}
    assert dataset_tasks(tmp_path) is None


def test_kits_repository_root_with_data_folder(tmp_path):
    write_kits_case(tmp_path / "data", "case_00007")
    assert detect_layout(tmp_path) == "kits19"
    assert [c.case_id for c in find_cases(tmp_path)] == ["case_00007"]


def test_kits_label_without_image_is_an_error(tmp_path):
    write_kits_case(tmp_path, "case_00000")
    write_kits_case(tmp_path, "case_00001")
    (tmp_path / "case_00001" / "imaging.nii.gz").unlink()
    with pytest.raises(UserError, match="case_00001"):
        find_cases(tmp_path)


def test_kits21_prefers_majority_vote_label(tmp_path):
    write_kits_case(tmp_path, "case_00000", label_name="aggregated_MAJ_seg.nii.gz")
    write_kits_case(tmp_path, "case_00000", label_name="segmentation.nii.gz")
    write_kits_case(tmp_path, "case_00001", label_name="segmentation.nii.gz")
    assert detect_layout(tmp_path) == "kits21"
    cases = find_cases(tmp_path)
    assert cases[0].label.name == "aggregated_MAJ_seg.nii.gz"
    assert cases[1].label.name == "segmentation.nii.gz"
    assert dataset_labels(tmp_path) == {"background": 0, "kidney": 1, "tumor": 2, "cyst": 3}


def test_single_kits_image_takes_its_case_folder_name(tmp_path, monkeypatch):
    write_kits_case(tmp_path, "case_00019")
    image = tmp_path / "case_00019" / "imaging.nii.gz"
    assert detect_layout(image) == "single"
    assert find_cases(image) == [CaseFiles("case_00019", image, None)]
    monkeypatch.chdir(tmp_path / "case_00019")  # a relative path names no folder until resolved
    assert [c.case_id for c in find_cases("imaging.nii.gz")] == ["case_00019"]
    other = write_nifti(tmp_path / "case_00019" / "segmentation_copy.nii.gz", phantom()[0])
    assert [c.case_id for c in find_cases(other)] == ["segmentation_copy"]


@pytest.mark.parametrize("label_name, layout", [("segmentation.nii.gz", "kits19"),
                                                ("aggregated_MAJ_seg.nii.gz", "kits21"), (None, "kits19")])
def test_one_kits_case_folder_is_one_case(tmp_path, label_name, layout):
    write_kits_case(tmp_path, "case_00019", label_name=label_name, with_label=label_name is not None)
    write_kits_case(tmp_path, "case_00020")  # a sibling case is not part of RAW/case_00019
    folder = tmp_path / "case_00019"
    assert detect_layout(folder) == layout
    label = folder / label_name if label_name else None
    assert find_cases(folder) == [CaseFiles("case_00019", folder / "imaging.nii.gz", label)]
    assert find_cases(str(folder) + "/")[0].case_id == "case_00019"
    assert "kidney" in dataset_labels(folder)


def write_msd(root, ids, labels_json, channel_suffix="_0000"):
    for i, case_id in enumerate(ids):
        image, label = phantom(seed=i)
        write_nifti(root / "imagesTr" / f"{case_id}{channel_suffix}.nii.gz", image)
        write_nifti(root / "labelsTr" / f"{case_id}.nii.gz", label)
    (root / "dataset.json").write_text(json.dumps({"name": "test", "labels": labels_json}))


def test_msd_layout_nnunet_v1_labels(tmp_path):
    write_msd(tmp_path, ["kid_002", "kid_001"], {"0": "background", "1": "kidney", "2": "tumour"})
    (tmp_path / "imagesTr" / "._kid_001_0000.nii.gz").write_bytes(b"macOS resource fork")
    assert detect_layout(tmp_path) == "msd"
    cases = find_cases(tmp_path)
    assert [c.case_id for c in cases] == ["kid_001", "kid_002"]
    assert cases[0].image.name == "kid_001_0000.nii.gz" and cases[0].label.name == "kid_001.nii.gz"
    assert dataset_labels(tmp_path) == {"background": 0, "kidney": 1, "tumour": 2}


def test_msd_original_names_and_v2_labels(tmp_path):
    write_msd(tmp_path, ["liver_3", "liver_10"], {"background": 0, "liver": 1, "cancer": 2}, channel_suffix="")
    cases = find_cases(tmp_path)
    assert [c.case_id for c in cases] == ["liver_10", "liver_3"]
    assert dataset_labels(tmp_path) == {"background": 0, "liver": 1, "cancer": 2}


def test_msd_missing_label_and_orphan_label(tmp_path):
    write_msd(tmp_path, ["a_001", "a_002"], {"0": "background", "1": "x"})
    (tmp_path / "labelsTr" / "a_002.nii.gz").unlink()
    with pytest.raises(UserError, match="a_002.*missing"):
        find_cases(tmp_path)
    write_nifti(tmp_path / "labelsTr" / "a_002.nii.gz", phantom()[1])
    write_nifti(tmp_path / "labelsTr" / "a_003.nii.gz", phantom()[1])
    with pytest.raises(UserError, match="a_003"):
        find_cases(tmp_path)


def test_msd_multichannel_is_rejected(tmp_path):
    write_msd(tmp_path, ["b_001"], {"0": "background", "1": "x"})
    write_nifti(tmp_path / "imagesTr" / "b_001_0001.nii.gz", phantom()[0])
    with pytest.raises(UserError, match="single-channel"):
        find_cases(tmp_path)


def test_mots_layout(tmp_path):
    write_mots_raw(tmp_path, {0: "liver", 1: "kidney"})
    assert detect_layout(tmp_path) == "mots"
    cases = find_cases(tmp_path)
    assert [(c.case_id, c.task_id) for c in cases] == [("kidney_0", 1), ("kidney_1", 1), ("liver_0", 0),
                                                       ("liver_1", 0)]
    assert dataset_labels(tmp_path) == {"background": 0, "organ": 1, "tumor": 2}
    assert dataset_tasks(tmp_path) == {0: "liver", 1: "kidney"}
    os.remove(tmp_path / "1_kidney" / "kidney_1_seg.nii.gz")
    with pytest.raises(UserError, match="kidney_1"):
        find_cases(tmp_path)


def test_flat_folder_and_single_file(tmp_path):
    image, _ = phantom()
    write_nifti(tmp_path / "b_0000.nii.gz", image)
    write_nifti(tmp_path / "a_0000.nii.gz", image)
    assert detect_layout(tmp_path) == "flat"
    assert [(c.case_id, c.label) for c in find_cases(tmp_path)] == [("a", None), ("b", None)]
    single = find_cases(tmp_path / "b_0000.nii.gz")
    assert detect_layout(tmp_path / "b_0000.nii.gz") == "single"
    assert single == [CaseFiles("b_0000", tmp_path / "b_0000.nii.gz", None)]
    write_nifti(tmp_path / "case_00005.nii.gz", image)  # mixed names keep their full ids
    assert [c.case_id for c in find_cases(tmp_path)] == ["a_0000", "b_0000", "case_00005"]
    with pytest.raises(UserError, match="unlabelled"):
        dataset_labels(tmp_path)


def test_layout_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        find_cases(tmp_path / "nope")
    with pytest.raises(UserError, match="no cases found"):
        find_cases(tmp_path)
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(UserError, match="not a NIfTI"):
        find_cases(tmp_path / "readme.txt")
    (tmp_path / "mots.json").write_text("{broken")
    with pytest.raises(UserError, match="mots.json"):
        find_cases(tmp_path)

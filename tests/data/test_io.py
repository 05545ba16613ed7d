import gzip
import json
import os

import nibabel as nib
import numpy as np
import pytest

from src.data.io import (CaseFiles, ImageMeta, dataset_labels, dataset_tasks, detect_layout, find_cases,
                         load_image, load_label, save_label)
from src.errors import UserError

# KiTS19 stores (slice, row, col) with every axis negated in the affine.
KITS19_AFFINE = np.array([[0, 0, -0.78125, 0], [0, -0.78125, 0, 0], [-3.0, 0, 0, 0], [0, 0, 0, 1]])


def write_nifti(path, array, affine=None, spacing=None):
    """Write a NIfTI file (parents created); ``spacing`` builds a diagonal affine."""
    if affine is None:
        affine = np.diag(list(spacing or (1.0, 1.0, 1.0)) + [1.0])
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(array), affine), str(path))
    return path


def phantom(shape=(16, 20, 24), seed=0):
    """A CT-like image (zero border, 'body' of HU values) and a label with kidney (1) and tumour (2)."""
    rng = np.random.RandomState(seed)
    image = np.zeros(shape, np.int16)
    body = tuple(slice(2, s - 2) for s in shape)
    image[body] = rng.randint(-200, 300, size=[s - 4 for s in shape])
    image[body][image[body] == 0] = 1  # the body must be nonzero everywhere for exact crop boxes
    label = np.zeros(shape, np.uint8)
    centre = [s // 2 for s in shape]
    label[centre[0] - 3:centre[0] + 3, centre[1] - 4:centre[1] + 4, centre[2] - 4:centre[2] + 4] = 1
    label[centre[0] - 1:centre[0] + 1, centre[1] - 2:centre[1] + 2, centre[2] - 2:centre[2] + 2] = 2
    image[label == 1] = 150
    image[label == 2] = 60
    return image, label


def write_mots_raw(raw, tasks, task_channels=None):
    """A MOTS-layout folder: two phantom cases per task, ``RAW/<id>_<task>/<case>[_seg].nii.gz`` + mots.json."""
    entries = []
    for task_id, task in tasks.items():
        for k in range(2):
            image, label = phantom(seed=k)
            case_id = f"{task}_{k}"
            write_nifti(raw / f"{task_id}_{task}" / f"{case_id}.nii.gz", image)
            write_nifti(raw / f"{task_id}_{task}" / f"{case_id}_seg.nii.gz", label)
            entries.append({"case_id": case_id, "task_id": task_id, "image": f"{task_id}_{task}/{case_id}.nii.gz",
                            "label": f"{task_id}_{task}/{case_id}_seg.nii.gz"})
    index = {"tasks": {str(k): v for k, v in tasks.items()}, "cases": entries}
    if task_channels is not None:
        index["task_channels"] = task_channels
    (raw / "mots.json").write_text(json.dumps(index))


def write_kits_case(root, case_id, shape=(16, 20, 24), seed=0, spacing=(3.0, 0.8, 0.8), label_name=None,
                    with_label=True):
    image, label = phantom(shape, seed)
    affine = np.array([[0, 0, -spacing[2], 0], [0, -spacing[1], 0, 0], [-spacing[0], 0, 0, 0], [0, 0, 0, 1]])
    write_nifti(root / case_id / "imaging.nii.gz", image, affine)
    if with_label:
        write_nifti(root / case_id / (label_name or "segmentation.nii.gz"), label, affine)
    return image, label


# ---------------------------------------------------------------- images


def test_load_image_float32_spacing_in_storage_order(tmp_path):
    image, _ = phantom()
    path = write_nifti(tmp_path / "ct.nii.gz", image, KITS19_AFFINE)
    array, meta = load_image(path)
    assert array.dtype == np.float32 and array.shape == image.shape
    np.testing.assert_array_equal(array, image.astype(np.float32))
    assert meta.spacing == pytest.approx((3.0, 0.78125, 0.78125))
    assert meta.shape == image.shape
    np.testing.assert_allclose(meta.affine, KITS19_AFFINE)
    assert ImageMeta.from_json(json.loads(json.dumps(meta.to_json()))) == meta


def test_load_image_applies_scaling(tmp_path):
    stored = np.arange(16 * 16 * 16, dtype=np.int16).reshape(16, 16, 16) % 2000
    img = nib.Nifti1Image(stored, np.eye(4))
    img.header.set_slope_inter(1.0, -1024.0)
    nib.save(img, str(tmp_path / "scaled.nii.gz"))
    array, _ = load_image(tmp_path / "scaled.nii.gz")
    np.testing.assert_array_equal(array, stored.astype(np.float32) - 1024)


def test_trailing_singleton_axis_is_accepted(tmp_path):
    path = write_nifti(tmp_path / "four.nii.gz", np.ones((16, 17, 18, 1), np.int16))
    array, meta = load_image(path)
    assert array.shape == (16, 17, 18) and meta.shape == (16, 17, 18)


def test_kits19_affine_and_header_round_trip(tmp_path):
    image, label = phantom()
    source = nib.Nifti1Image(image, KITS19_AFFINE)
    source.header.set_qform(KITS19_AFFINE, code=1)
    source.header.set_sform(KITS19_AFFINE, code=1)
    source.header["descrip"] = b"kits19 style"
    nib.save(source, str(tmp_path / "imaging.nii.gz"))
    _, meta = load_image(tmp_path / "imaging.nii.gz")
    # the meta travels through JSON (case.json) before predictions are written
    meta = ImageMeta.from_json(json.loads(json.dumps(meta.to_json())))
    out = tmp_path / "pred.nii.gz"
    save_label(label, meta, out)

    written = nib.load(str(out))
    original = nib.load(str(tmp_path / "imaging.nii.gz"))
    assert written.header.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asanyarray(written.dataobj), label)
    np.testing.assert_array_equal(written.affine, original.affine)
    np.testing.assert_array_equal(written.header.get_qform(), original.header.get_qform())
    np.testing.assert_array_equal(written.header.get_sform(), original.header.get_sform())
    expected_changes = {"datatype", "bitpix", "scl_slope", "scl_inter", "cal_min", "cal_max", "vox_offset"}
    for key in original.header.keys():
        if key not in expected_changes:
            assert np.array_equal(written.header[key], original.header[key]), key
    assert written.header.get_zooms() == original.header.get_zooms()
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []
    # loading the written label against the source geometry works
    np.testing.assert_array_equal(load_label(out, meta), label)


def test_save_label_plain_nii_and_overwrite(tmp_path):
    image, label = phantom()
    write_nifti(tmp_path / "ct.nii", image, spacing=(2.0, 1.0, 1.5))
    _, meta = load_image(tmp_path / "ct.nii")
    out = tmp_path / "seg.nii"
    save_label(np.zeros_like(label), meta, out)
    save_label(label, meta, out)
    with open(out, "rb") as handle:
        assert handle.read(2) != b"\x1f\x8b"  # not gzipped
    np.testing.assert_array_equal(np.asanyarray(nib.load(str(out)).dataobj), label)
    with pytest.raises(ValueError):
        save_label(label[:-1], meta, out)


def test_load_label_checks_shape_and_values(tmp_path):
    image, label = phantom()
    write_nifti(tmp_path / "ct.nii.gz", image)
    _, meta = load_image(tmp_path / "ct.nii.gz")
    write_nifti(tmp_path / "seg.nii.gz", label)
    loaded = load_label(tmp_path / "seg.nii.gz", meta)
    assert loaded.dtype == np.int16
    np.testing.assert_array_equal(loaded, label)

    write_nifti(tmp_path / "short.nii.gz", label[:-1])
    with pytest.raises(UserError, match="short.nii.gz.*shape"):
        load_label(tmp_path / "short.nii.gz", meta)
    write_nifti(tmp_path / "neg.nii.gz", label.astype(np.int16) - 1)
    with pytest.raises(UserError, match="outside"):
        load_label(tmp_path / "neg.nii.gz", meta)
    write_nifti(tmp_path / "frac.nii.gz", label.astype(np.float32) * 0.5)
    with pytest.raises(UserError, match="non-integer"):
        load_label(tmp_path / "frac.nii.gz", meta)


@pytest.mark.parametrize("problem", ["missing", "truncated", "garbage", "nan", "inf", "2d", "4d", "directory"])
def test_broken_images_raise_user_error(tmp_path, problem):
    image, _ = phantom()
    path = tmp_path / "ct.nii.gz"
    if problem == "missing":
        pattern = "not found"
    elif problem == "truncated":
        write_nifti(path, image)
        payload = path.read_bytes()
        path.write_bytes(payload[: len(payload) // 2])
        pattern = "cannot read image"
    elif problem == "garbage":
        path.write_bytes(gzip.compress(b"this is not a nifti header" * 40))
        pattern = "cannot read image"
    elif problem in ("nan", "inf"):
        bad = image.astype(np.float32)
        bad[3, 4, 5] = np.nan if problem == "nan" else np.inf
        write_nifti(path, bad)
        pattern = "NaN or infinite"
    elif problem == "2d":
        write_nifti(path, image[0])
        pattern = "3D"
    elif problem == "4d":
        write_nifti(path, np.stack([image, image], axis=-1))
        pattern = "3D"
    else:
        path.mkdir()
        pattern = "not a file"
    with pytest.raises(UserError, match=pattern) as info:
        load_image(path)
    assert "ct.nii.gz" in str(info.value)


# ---------------------------------------------------------------- layouts


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

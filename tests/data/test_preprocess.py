import json

import numpy as np
import pytest

from src.data.io import load_image

from src.data.layouts import find_cases
from src.data.preprocess import (normalize_intensity, preprocess_case, preprocess_dataset,
                                 preprocess_image_for_inference, sample_foreground_coords)
from src.data.plan import Plan
from src.errors import UserError
from tests.data.preprocessed_fixture import make_plan as fixture_plan
from tests.data.test_io import phantom, write_kits_case, write_mots_raw, write_nifti

LABELS = {"background": 0, "kidney": 1, "tumor": 2}


def make_plan(target_spacing, normalization="ct"):
    return Plan.from_json(dict(fixture_plan([]), labels=LABELS, normalization=normalization, clip_window=[-100.0, 200.0],
                               intensity={"mean": 100.0, "std": 40.0, "p005": 60.0, "p995": 150.0},
                               target_spacing=list(target_spacing)))


def load_npz(path):
    with np.load(path) as npz:
        return {k: npz[k] for k in npz.files}


def test_normalization_modes():
    data = np.array([[[[-500.0, 60.0, 100.0, 140.0, 900.0]]]], np.float32)
    ct = normalize_intensity(data, make_plan([1, 1, 1]))
    np.testing.assert_allclose(ct.ravel(), [(60 - 100) / 40, (60 - 100) / 40, 0.0, 1.0, (150 - 100) / 40])
    scaled = normalize_intensity(data, make_plan([1, 1, 1], "ct_clip_scale"))
    np.testing.assert_allclose(scaled.ravel(), [-0.5, 0.3, 0.5, 0.7, 1.0])
    assert ct.dtype == scaled.dtype == np.float32
    assert data[0, 0, 0, 0] == -500.0  # the input is left alone


def test_foreground_coordinates_are_capped_deterministic_and_correct():
    seg = np.zeros((20, 20, 20), np.int8)
    seg[2:18, 2:18, 2:18] = 1
    seg[5:7, 5:7, 5:7] = 2
    coords = sample_foreground_coords(seg, [1, 2, 3], max_samples=500)
    assert coords[1].shape == (500, 3) and coords[1].dtype == np.int32
    assert coords[2].shape == (8, 3) and coords[3].shape == (0, 3)
    assert len(np.unique(coords[1], axis=0)) == 500
    assert (seg[tuple(coords[1].T)] == 1).all() and (seg[tuple(coords[2].T)] == 2).all()
    again = sample_foreground_coords(seg, [1, 2, 3], max_samples=500)
    assert all(np.array_equal(coords[k], again[k]) for k in coords)


def test_preprocess_case_crops_normalizes_resamples(tmp_path):
    write_kits_case(tmp_path / "raw", "case_00000", shape=(16, 24, 28), spacing=(3.0, 0.8, 0.8))
    case = find_cases(tmp_path / "raw")[0]
    out = tmp_path / "pre"
    out.mkdir()
    properties = preprocess_case(case, make_plan([3.0, 1.6, 1.6]), out)
    arrays = load_npz(out / "case_00000.npz")
    assert arrays["data"].dtype == np.float32 and arrays["seg"].dtype == np.int8
    # cropped to the 12 x 20 x 24 body, then in-plane halved
    assert arrays["data"].shape == (1, 12, 10, 12) and arrays["seg"].shape == (12, 10, 12)
    assert arrays["data"].min() >= (60 - 100) / 40 - 1e-5 and arrays["data"].max() <= (150 - 100) / 40 + 1e-5
    assert set(np.unique(arrays["seg"])) <= {0, 1, 2}
    for value in (1, 2):
        coords = arrays[f"fg_{value}"]
        assert len(coords) > 0 and (arrays["seg"][tuple(coords.T)] == value).all()
    written = json.loads((out / "case_00000.json").read_text())
    assert written == json.loads(json.dumps(properties))
    assert written["case_id"] == "case_00000" and written["task_id"] is None
    assert written["shape_before_crop"] == [16, 24, 28]
    assert written["crop_bbox"] == [[2, 14], [2, 22], [2, 26]]
    assert written["shape_after_crop"] == [12, 20, 24] and written["shape_after_resample"] == [12, 10, 12]
    assert written["original_spacing"] == pytest.approx([3.0, 0.8, 0.8])
    assert written["labels_present"] == [1, 2]
    assert written["image_meta"]["shape"] == [16, 24, 28]
    assert sorted(p.name for p in out.iterdir()) == ["case_00000.json", "case_00000.npz"]


def test_ignore_label_outside_the_body_survives(tmp_path):
    image, label = phantom((16, 20, 24))
    image[2:14, 2:5, 2:12] = 0  # a notch open to the outside: its background is outside the mask
    write_nifti(tmp_path / "raw" / "case_00000" / "imaging.nii.gz", image)
    write_nifti(tmp_path / "raw" / "case_00000" / "segmentation.nii.gz", label)
    case = find_cases(tmp_path / "raw")[0]
    preprocess_case(case, make_plan([1.0, 1.0, 1.0]), tmp_path)
    seg = load_npz(tmp_path / "case_00000.npz")["seg"]
    assert seg.shape == (12, 16, 20)
    assert (seg[:, :3, :10] == -1).all()
    assert (seg[:, 3:, :] >= 0).all() and (seg[:, :3, 10:] >= 0).all()


def test_inference_path_equals_training_path(tmp_path):
    write_kits_case(tmp_path / "raw", "case_00000", shape=(16, 24, 28), spacing=(3.0, 0.8, 0.8))
    case = find_cases(tmp_path / "raw")[0]
    plan = make_plan([2.0, 1.2, 1.2])
    properties = preprocess_case(case, plan, tmp_path)
    image, meta = load_image(case.image)
    data, inference_properties = preprocess_image_for_inference(image, meta, plan)
    np.testing.assert_array_equal(data, load_npz(tmp_path / "case_00000.npz")["data"])
    for key, value in inference_properties.items():
        assert json.loads(json.dumps(value)) == json.loads(json.dumps(properties[key])), key
    assert inference_properties["separate_z_axis"] == 0  # 3.0 / 0.8 > 3
    assert image.flags.f_contiguous  # nibabel's layout; a C-ordered copy gives the same result
    c_ordered, c_properties = preprocess_image_for_inference(np.ascontiguousarray(image), meta, plan)
    assert c_properties == inference_properties
    # the spline resampling sums in a layout-dependent order: float32 rounding differs
    np.testing.assert_allclose(c_ordered, data, rtol=0, atol=1e-5)


def test_no_resampling_when_already_at_target(tmp_path):
    image, _ = phantom((16, 20, 24))
    write_nifti(tmp_path / "ct.nii.gz", image, spacing=(2.0, 1.0, 1.0))
    array, meta = load_image(tmp_path / "ct.nii.gz")
    data, properties = preprocess_image_for_inference(array, meta, make_plan([2.0, 1.0, 1.0]))
    expected = normalize_intensity(array[None, 2:14, 2:18, 2:22], make_plan([2.0, 1.0, 1.0]))
    np.testing.assert_array_equal(data, expected)
    assert properties["separate_z_axis"] is None


def _raw_dataset(root, count=4):
    for i in range(count):
        write_kits_case(root, f"case_{i:05d}", shape=(16 + i, 20, 24), seed=i, spacing=(2.0 + 0.5 * i, 0.8, 0.8))


def _run(raw, out, **overrides):
    kwargs = dict(patch_budget_voxels=8 * 16 * 16, num_folds=2, workers=1, progress=False,
                  foreground_pool_size=4000)
    kwargs.update(overrides)
    return preprocess_dataset(raw, out, **kwargs)


def test_preprocess_dataset_end_to_end(tmp_path):
    _raw_dataset(tmp_path / "raw")
    write_kits_case(tmp_path / "raw", "case_00210", with_label=False)  # a KiTS19 test case is skipped
    plan = _run(tmp_path / "raw", tmp_path / "pre", target_spacing=[2.5, 1.6, 1.6])
    on_disk = json.loads((tmp_path / "pre" / "plans.json").read_text())
    assert on_disk == plan.to_json()
    assert plan.cases == [f"case_{i:05d}" for i in range(4)]
    assert plan.get("dataset") == "kits19" and plan.labels == LABELS
    assert np.prod(plan.patch_size) <= 8 * 16 * 16
    splits = json.loads((tmp_path / "pre" / "splits.json").read_text())
    assert len(splits) == 2 and sorted(splits[0]["val"] + splits[1]["val"]) == plan.cases
    for case_id in plan.cases:
        arrays = load_npz(tmp_path / "pre" / f"{case_id}.npz")
        case_json = json.loads((tmp_path / "pre" / f"{case_id}.json").read_text())
        assert arrays["data"].shape[1:] == arrays["seg"].shape == tuple(case_json["shape_after_resample"])
    assert not (tmp_path / "pre" / "case_00210.npz").exists()
    assert not [p for p in (tmp_path / "pre").iterdir() if ".tmp-" in p.name]


def test_preprocess_dataset_parallel_matches_serial_and_plans_spacing(tmp_path):
    _raw_dataset(tmp_path / "raw", count=3)
    serial = _run(tmp_path / "raw", tmp_path / "serial")
    parallel = _run(tmp_path / "raw", tmp_path / "parallel", workers=2)
    assert serial == parallel
    assert serial.target_spacing == pytest.approx([2.5, 0.8, 0.8], abs=1e-6)  # median spacing
    for case_id in serial.cases:
        a, b = load_npz(tmp_path / "serial" / f"{case_id}.npz"), load_npz(tmp_path / "parallel" / f"{case_id}.npz")
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_image_budget_coarsens_the_planned_spacing_of_the_saved_cases(tmp_path):
    _raw_dataset(tmp_path / "raw", count=3)
    plan = _run(tmp_path / "raw", tmp_path / "pre", image_budget_voxels=1500)
    assert plan.get("target_spacing_rule") == "median, coarsened to 1500 voxels"
    assert plan.target_spacing[0] > 2.5 and plan.target_spacing[1] > 0.8
    assert np.prod(plan.get("median_shape")) <= 1500 * 1.05
    for case_id in plan.cases:
        props = json.loads((tmp_path / "pre" / f"{case_id}.json").read_text())
        assert load_npz(tmp_path / "pre" / f"{case_id}.npz")["data"].shape[1:] == tuple(props["shape_after_resample"])


def test_broken_case_is_named_and_the_others_finish(tmp_path):
    _raw_dataset(tmp_path / "raw", count=4)
    broken = tmp_path / "raw" / "case_00002" / "segmentation.nii.gz"
    write_nifti(broken, np.zeros((5, 5, 5), np.uint8))
    with pytest.raises(UserError, match=r"failed for 1 case\(s\): case_00002: .*shape"):
        _run(tmp_path / "raw", tmp_path / "pre")
    plan = Plan.read(tmp_path / "pre" / "plans.json")
    assert plan.cases == ["case_00000", "case_00001", "case_00003"]
    for case_id in plan.cases:
        assert (tmp_path / "pre" / f"{case_id}.npz").exists()
    assert not (tmp_path / "pre" / "case_00002.npz").exists()


def test_preprocess_dataset_user_errors(tmp_path):
    image, _ = phantom()
    write_nifti(tmp_path / "flat" / "a.nii.gz", image)
    with pytest.raises(UserError, match="unlabelled"):
        _run(tmp_path / "flat", tmp_path / "pre")
    write_kits_case(tmp_path / "unlabelled", "case_00000", with_label=False)
    with pytest.raises(UserError, match="segmentation"):
        _run(tmp_path / "unlabelled", tmp_path / "pre")
    _raw_dataset(tmp_path / "few", count=2)
    with pytest.raises(UserError, match="num_folds must be at least 2"):
        _run(tmp_path / "few", tmp_path / "pre", num_folds=1)
    assert not (tmp_path / "pre").exists()  # refused before any work
    cyst = np.where(phantom((17, 20, 24))[1] > 0, 3, 0).astype(np.uint8)  # a KiTS21 label in a KiTS19 folder
    image_affine = load_image(tmp_path / "few" / "case_00001" / "imaging.nii.gz")[1].affine
    write_nifti(tmp_path / "few" / "case_00001" / "segmentation.nii.gz", cyst, image_affine)
    with pytest.raises(UserError, match=r"case_00001.*\[3\]"):
        _run(tmp_path / "few", tmp_path / "pre")


def test_mots_dataset_keeps_tasks(tmp_path):
    raw = tmp_path / "raw"
    write_mots_raw(raw, {0: "liver", 1: "kidney"})
    plan = _run(raw, tmp_path / "pre", normalization="ct_clip_scale", clip_window=[-325.0, 325.0])
    assert plan.get("dataset") == "mots" and plan.tasks == {"0": "liver", "1": "kidney"}
    assert plan.labels == {"background": 0, "organ": 1, "tumor": 2}
    assert json.loads((tmp_path / "pre" / "kidney_1.json").read_text())["task_id"] == 1
    data = load_npz(tmp_path / "pre" / "liver_0.npz")["data"]
    assert data.min() >= -1.0 and data.max() <= 1.0

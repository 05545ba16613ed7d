"""Preprocessing at the edges: 1-voxel and sub-voxel images, resampling beyond the machine's memory, and
datasets of one to four cases (folds as many as the cases allow)."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import src.data.preprocess as preprocess_module
from src.data.io import load_image
from src.data.preprocess import preprocess_dataset, preprocess_image_for_inference
from src.data.plan import Plan
from src.data.preprocessed import fold_cases, fold_validation_cases, load_plan
from src.data.resample import compute_new_shape, estimate_resampling_bytes
from src.data.preprocessed_case import load_case
from src.errors import UserError
from src.infer.geometry import probabilities_to_original
from tests.data.preprocessed_fixture import make_plan
from tests.data.test_io import write_kits_case, write_nifti

ROOT = Path(__file__).resolve().parents[2]
GIB = 2 ** 30


def _tiny_case(root, case_id, shape, spacing, value=100):
    """A case whose every voxel is body and kidney (so the nonzero crop keeps it whole)."""
    affine = np.diag(list(spacing) + [1.0])
    write_nifti(root / case_id / "imaging.nii.gz", np.full(shape, value, np.int16), affine)
    write_nifti(root / case_id / "segmentation.nii.gz", np.ones(shape, np.uint8), affine)
    return root / case_id / "imaging.nii.gz"


def test_an_axis_thinner_than_half_a_target_voxel_keeps_one_voxel():
    assert compute_new_shape([1, 1, 1], [1.0, 1.0, 1.0], [2.0, 2.0, 2.0]) == (1, 1, 1)
    assert compute_new_shape([2, 3, 1], [1.0, 1.0, 1.0], [3.0, 3.0, 3.0]) == (1, 1, 1)
    assert compute_new_shape([4, 4, 4], [0.01] * 3, [1.0] * 3) == (1, 1, 1)
    assert compute_new_shape([4, 30, 30], [0.01, 1.0, 1.0], [1.0, 0.5, 2.0]) == (1, 60, 15)


@pytest.mark.parametrize("shape, spacing, target, resampled", [
    ((1, 1, 1), (1.0, 1.0, 1.0), [2.0, 2.0, 2.0], (1, 1, 1)),
    ((2, 3, 1), (1.0, 1.0, 1.0), [3.0, 3.0, 3.0], (1, 1, 1)),
    ((4, 4, 4), (0.01, 0.01, 0.01), [1.0, 1.0, 1.0], (1, 1, 1)),
    ((2, 3, 1), (1.0, 1.0, 1.0), [0.5, 0.5, 0.5], (4, 6, 2)),
])
def test_tiny_images_go_through_preprocessing_training_reads_and_prediction(tmp_path, shape, spacing, target,
                                                                             resampled):
    raw = tmp_path / "raw"
    images = [_tiny_case(raw, f"case_0000{i}", shape, spacing, value=100 + 50 * i) for i in range(2)]
    plan = preprocess_dataset(raw, tmp_path / "pre", target_spacing=target, num_folds=5, workers=1,
                              progress=False, foreground_pool_size=100)
    assert load_plan(tmp_path / "pre") == plan and plan.num_folds == 2
    for case_id in plan.cases:
        case = load_case(tmp_path / "pre", case_id, plan.identity)
        assert case.data.shape == (1, *resampled) and case.seg.shape == resampled
        assert np.isfinite(case.data).all() and (np.asarray(case.seg) == 1).all()
        assert len(case.fg_locations[1]) == int(np.prod(resampled))
    # prediction: the same preprocessing, then back to the original geometry
    image, meta = load_image(images[0])
    data, properties = preprocess_image_for_inference(image, meta, plan)
    assert data.shape == (1, *resampled) and np.isfinite(data).all()
    probabilities = np.zeros((3, *resampled), np.float32)
    probabilities[1] = 1.0
    label = probabilities_to_original(probabilities, properties)
    assert label.shape == shape and (label == 1).all()


def test_prepare_py_preprocesses_a_single_one_voxel_case(tmp_path):
    _tiny_case(tmp_path / "raw", "case_00000", (1, 1, 1), (1.0, 1.0, 1.0))
    result = subprocess.run([sys.executable, str(ROOT / "prepare.py"), "preprocess", "--raw", str(tmp_path / "raw"),
                             "--out", str(tmp_path / "pre"), "--config", str(ROOT / "config" / "demo.yaml")],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "preprocessed 1 cases" in result.stdout
    assert "no cross-validation folds" in result.stderr
    assert json.loads((tmp_path / "pre" / "splits.json").read_text()) == []
    plan = load_plan(tmp_path / "pre")
    assert fold_cases(tmp_path / "pre", plan, "all") == (["case_00000"], ["case_00000"])


def _limit_memory(monkeypatch, gib):
    monkeypatch.setattr(preprocess_module, "memory_limit_bytes", lambda: int(gib * GIB))


def test_resampling_beyond_the_machine_memory_is_refused_naming_file_shape_and_gib(tmp_path, monkeypatch):
    _limit_memory(monkeypatch, 16)
    path = write_nifti(tmp_path / "huge.nii.gz", np.full((16, 16, 16), 100, np.int16), spacing=(100.0, 100.0, 100.0))
    image, meta = load_image(path)
    plan = Plan.from_json(dict(make_plan([]), target_spacing=[1.0, 1.0, 1.0], normalization="ct",
                               intensity={"mean": 100.0, "std": 10.0, "p005": 0.0, "p995": 200.0}))
    needed = estimate_resampling_bytes([16] * 3, [1600] * 3, 1) / GIB
    assert needed > 16
    with pytest.raises(UserError) as caught:
        preprocess_image_for_inference(image, meta, plan)
    message = str(caught.value)
    assert "huge.nii.gz" in message and "[16, 16, 16]" in message and "[1600, 1600, 1600]" in message
    assert f"about {needed:.1f} GiB, more than the 16.0 GiB" in message and "\n" not in message
    # under the same limit, a target spacing that does not blow the image up passes
    data, _ = preprocess_image_for_inference(image, meta, plan.replace(target_spacing=[200.0, 200.0, 200.0]))
    assert data.shape == (1, 8, 8, 8)


def test_a_case_beyond_memory_is_named_and_the_others_finish(tmp_path, monkeypatch):
    raw = tmp_path / "raw"
    for i in range(3):
        write_kits_case(raw, f"case_{i:05d}", shape=(16, 20, 24), seed=i, spacing=(3.0, 0.8, 0.8))
    write_kits_case(raw, "case_00003", shape=(16, 20, 24), seed=3, spacing=(3.0, 80.0, 80.0))
    _limit_memory(monkeypatch, 0.01)  # 10 MiB: the 80 mm case would grow 100x in plane
    with pytest.raises(UserError, match=r"failed for 1 case\(s\): case_00003: .*case_00003.*imaging.nii.gz: "
                                        r"resampling .* GiB, more than the 0.0 GiB"):
        preprocess_dataset(raw, tmp_path / "pre", target_spacing=[3.0, 0.8, 0.8], patch_budget_voxels=4096,
                           num_folds=5, workers=1, progress=False, foreground_pool_size=3000)
    assert load_plan(tmp_path / "pre").cases == ["case_00000", "case_00001", "case_00002"]


def test_estimated_resampling_memory_counts_input_output_and_label_map():
    # (2x2x2 -> 4x4x4): input 8 + output 64 voxels, the largest step holds 16 + 32 (x then y then z)
    assert estimate_resampling_bytes([2, 2, 2], [4, 4, 4]) == 4 * (8 + 64) + 4 * (32 + 64)
    assert estimate_resampling_bytes([2, 2, 2], [4, 4, 4], with_seg=True) == (
        estimate_resampling_bytes([2, 2, 2], [4, 4, 4]) + 2 * 8 + 12 * 64)
    assert estimate_resampling_bytes([10, 10, 10], [5, 5, 5], channels=2) == 4 * 2 * (1000 + 125) + 4 * (1000 + 500)


@pytest.mark.parametrize("count", [1, 2, 3, 4])
def test_one_to_four_cases_preprocess_with_as_many_folds_as_they_allow(tmp_path, capsys, count):
    raw = tmp_path / "raw"
    for i in range(count):
        write_kits_case(raw, f"case_{i:05d}", shape=(16, 20, 24), seed=i, spacing=(3.0, 0.8, 0.8))
    plan = preprocess_dataset(raw, tmp_path / "pre", target_spacing=[3.0, 1.6, 1.6], patch_budget_voxels=4096,
                              num_folds=5, workers=1, progress=False, foreground_pool_size=3000)
    folds = 0 if count == 1 else count
    assert plan.num_folds == folds and load_plan(tmp_path / "pre") == plan
    splits = json.loads((tmp_path / "pre" / "splits.json").read_text())
    assert len(splits) == folds
    assert sorted(sum((fold_validation_cases(tmp_path / "pre", f) for f in range(folds)), [])) == (
        plan.cases if folds else [])
    for fold in range(folds):
        train, val = fold_cases(tmp_path / "pre", plan, fold)
        assert train and val and sorted(train + val) == plan.cases
    assert fold_cases(tmp_path / "pre", plan, "all") == (plan.cases, plan.cases)
    with pytest.raises(UserError, match=f"--fold {folds} does not exist"):
        fold_cases(tmp_path / "pre", plan, folds)
    note = capsys.readouterr().err
    assert ("no cross-validation folds" in note) if count == 1 else (f"{count}-fold cross-validation instead of 5-fold" in note)

"""Fault injection over every command: bad inputs and bad outputs, table-driven.

Each row runs one entry script in-process against a shared tiny workspace (raw cases, a preprocessed
folder, a checkpoint, a MindIR) after the row's own damage, and requires what the README's Reliability
section promises: exit status 2, an ``error:`` line naming the problem, no traceback, every file that
existed before unchanged, and no temporary left behind. The kills at every write are tested per stage
(tests/data, tests/train, tests/infer); this file is about what a user can hand over.
"""
import os
import shutil
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.infer.tiny_model import tiny_config, write_tiny_checkpoint, write_tiny_kits19
from tests.helpers import execution_mode_kept, load_script, snapshot

ROOT = Path(__file__).resolve().parents[1]
CONFIG = "device_target: CPU\namp_level: O0\ntta_mirror: false\npostprocess: none\nnum_workers: 1\n" \
         "epochs: 1\niters_per_epoch: 1\nval_iters: 1\nbatch_size: 2\nbase_features: 4\nmax_features: 8\n" \
         "max_stages: 2\ntarget_spacing: [3.0, 1.5, 1.5]\npatch_size: [8, 16, 16]\nnum_folds: 2\n"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A pristine tiny project: raw KiTS19 cases, their preprocessed folder, a checkpoint, a MindIR."""
    from src.data.preprocess import preprocess_dataset
    from src.infer.export import export_network

    root = tmp_path_factory.mktemp("workspace")
    write_tiny_kits19(root / "raw", num_cases=4)
    plan = preprocess_dataset(root / "raw", root / "pre", target_spacing=[3.0, 1.5, 1.5], patch_size=[8, 16, 16],
                              base_features=4, max_features=8, max_stages=2, num_folds=2, workers=1,
                              progress=False)
    (root / "cfg.yaml").write_text(CONFIG)
    ckpt = write_tiny_checkpoint(root / "model" / "fold_0" / "checkpoint_best.ckpt", plan=plan)
    with execution_mode_kept():
        export_network(tiny_config(), ckpt, root / "model" / "tiny", "MINDIR", batch_size=1)
    return root


def _copy(ws, name, to):
    target = to / name
    if (ws / name).is_dir():
        shutil.copytree(ws / name, target)
    else:
        shutil.copy(ws / name, target)
    return target


def _nifti(path, array, affine, pixdim=None, sform_code=1, qform_code=1):
    image = nib.Nifti1Image(array, None)
    image.set_sform(affine, code=sform_code)
    image.header.set_zooms(tuple(float(z) for z in np.linalg.norm(affine[:3, :3], axis=0)))
    if qform_code:
        image.set_qform(affine, code=qform_code)
    if pixdim is not None:
        image.header["pixdim"][1:4] = pixdim
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, path)
    return path


def _raw_case(root, name="case_00000"):
    """A KiTS19 folder with one sound case; returns (folder, image array, label array, affine)."""
    raw = root / "bad_raw"
    write_tiny_kits19(raw, num_cases=1)
    image = nib.load(raw / name / "imaging.nii.gz")
    label = nib.load(raw / name / "segmentation.nii.gz")
    return raw, np.asanyarray(image.dataobj), np.asanyarray(label.dataobj), image.affine


# ---------------------------------------------------------------- the rows: damage -> argv

def prepare_missing_raw(ws, tmp):
    return "prepare.py", ["preprocess", "--raw", str(tmp / "nowhere"), "--out", str(tmp / "pre"),
                          "--config", str(ws / "cfg.yaml")], "not found"


def prepare_pixdim_zero(ws, tmp):
    raw, image, label, affine = _raw_case(tmp)
    _nifti(raw / "case_00000" / "imaging.nii.gz", image, affine, pixdim=(0, 0, 0))
    return "prepare.py", ["preprocess", "--raw", str(raw), "--out", str(tmp / "pre"),
                          "--config", str(ws / "cfg.yaml")], "imaging.nii.gz"


def prepare_singular_affine(ws, tmp):
    raw, image, label, affine = _raw_case(tmp)
    singular = affine.copy()
    singular[:3, 2] = 0
    _nifti(raw / "case_00000" / "imaging.nii.gz", image, singular, qform_code=0)  # a qform cannot hold it
    return "prepare.py", ["preprocess", "--raw", str(raw), "--out", str(tmp / "pre"),
                          "--config", str(ws / "cfg.yaml")], "imaging.nii.gz"


def prepare_label_geometry_mismatch(ws, tmp):
    raw, image, label, affine = _raw_case(tmp)
    moved = affine.copy()
    moved[:3, :3] *= 1.5
    moved[:3, 3] += 40
    _nifti(raw / "case_00000" / "segmentation.nii.gz", label, moved)
    return "prepare.py", ["preprocess", "--raw", str(raw), "--out", str(tmp / "pre"),
                          "--config", str(ws / "cfg.yaml")], "segmentation.nii.gz"


def prepare_label_shape_mismatch(ws, tmp):
    raw, image, label, affine = _raw_case(tmp)
    _nifti(raw / "case_00000" / "segmentation.nii.gz", label[:-1], affine)
    return "prepare.py", ["preprocess", "--raw", str(raw), "--out", str(tmp / "pre"),
                          "--config", str(ws / "cfg.yaml")], "shape"


def prepare_truncated_image(ws, tmp):
    raw, image, label, affine = _raw_case(tmp)
    path = raw / "case_00000" / "imaging.nii.gz"
    path.write_bytes(path.read_bytes()[:200])
    return "prepare.py", ["preprocess", "--raw", str(raw), "--out", str(tmp / "pre"),
                          "--config", str(ws / "cfg.yaml")], "imaging.nii.gz"


def prepare_out_is_a_file(ws, tmp):
    (tmp / "taken").write_text("a user's file")
    return "prepare.py", ["preprocess", "--raw", str(ws / "raw"), "--out", str(tmp / "taken"),
                          "--config", str(ws / "cfg.yaml")], "taken"


def prepare_missing_config(ws, tmp):
    return "prepare.py", ["preprocess", "--raw", str(ws / "raw"), "--out", str(tmp / "pre"),
                          "--config", str(tmp / "none.yaml")], "config file not found"


def train_missing_data(ws, tmp):
    return "train.py", ["--config", str(ws / "cfg.yaml"), "--data", str(tmp / "nowhere"), "--fold", "0",
                        "--output", str(tmp / "out")], "nowhere"


def train_fold_that_does_not_exist(ws, tmp):
    return "train.py", ["--config", str(ws / "cfg.yaml"), "--data", str(ws / "pre"), "--fold", "7",
                        "--output", str(tmp / "out")], "fold"


def train_over_a_finished_run(ws, tmp):
    out = tmp / "out"
    (out / "fold_0").mkdir(parents=True)
    shutil.copy(ws / "model" / "fold_0" / "checkpoint_best.ckpt", out / "fold_0" / "checkpoint_latest.ckpt")
    shutil.copy(ws / "model" / "fold_0" / "checkpoint_best.ckpt", out / "fold_0" / "checkpoint_best.ckpt")
    return "train.py", ["--config", str(ws / "cfg.yaml"), "--data", str(ws / "pre"), "--fold", "0",
                        "--output", str(out)], "--resume"


def train_resume_without_checkpoint(ws, tmp):
    return "train.py", ["--config", str(ws / "cfg.yaml"), "--data", str(ws / "pre"), "--fold", "0",
                        "--output", str(tmp / "out"), "--resume"], "checkpoint"


def train_corrupt_pretrained(ws, tmp):
    (tmp / "bad.ckpt").write_bytes(b"\x00" * 64)
    return "train.py", ["--config", str(ws / "cfg.yaml"), "--data", str(ws / "pre"), "--fold", "0",
                        "--output", str(tmp / "out"), "--pretrained", str(tmp / "bad.ckpt")], "bad.ckpt"


def train_bad_config_value(ws, tmp):
    return "train.py", ["--config", str(ws / "cfg.yaml"), "--data", str(ws / "pre"), "--fold", "0",
                        "--output", str(tmp / "out"), "--epochs", "0"], "epochs"


def train_mixed_preprocessed_folder(ws, tmp):
    pre = _copy(ws, "pre", tmp)
    import json
    plans = json.loads((pre / "plans.json").read_text())
    plans["target_spacing"] = [2.0, 1.0, 1.0]
    (pre / "plans.json").write_text(json.dumps(plans))
    return "train.py", ["--config", str(ws / "cfg.yaml"), "--data", str(pre), "--fold", "0",
                        "--output", str(tmp / "out"), "--target_spacing", "2.0", "1.0", "1.0"], "plan"


def eval_missing_predictions(ws, tmp):
    return "eval.py", ["--pred", str(tmp / "nowhere"), "--ref", str(ws / "raw"), "--metric", "kits19",
                       "--out", str(tmp / "m.csv")], "nowhere"


def eval_flipped_prediction(ws, tmp):
    pred = tmp / "pred"
    for case in sorted((ws / "raw").iterdir()):
        label = nib.load(case / "segmentation.nii.gz")
        flipped = np.ascontiguousarray(np.asanyarray(label.dataobj)[:, :, ::-1])
        affine = label.affine.copy()
        affine[:3, 3] += affine[:3, 2] * (flipped.shape[2] - 1)
        affine[:3, 2] *= -1
        _nifti(pred / f"{case.name}.nii.gz", flipped, affine)
    return "eval.py", ["--pred", str(pred), "--ref", str(ws / "raw"), "--metric", "kits19",
                       "--out", str(tmp / "m.csv")], "case_0000"


def eval_out_under_a_file(ws, tmp):
    (tmp / "file").write_text("a user's file")
    pred = tmp / "pred"
    pred.mkdir()
    for case in sorted((ws / "raw").iterdir()):
        shutil.copy(case / "segmentation.nii.gz", pred / f"{case.name}.nii.gz")
    return "eval.py", ["--pred", str(pred), "--ref", str(ws / "raw"), "--metric", "kits19",
                       "--out", str(tmp / "file" / "m.csv")], "file"


def eval_corrupt_checkpoint(ws, tmp):
    (tmp / "bad.ckpt").write_bytes(b"\x00" * 64)
    return "eval.py", ["--config", str(ws / "cfg.yaml"), "--ckpt", str(tmp / "bad.ckpt"), "--data", str(ws / "pre"),
                       "--fold", "0", "--output", str(tmp / "ev")], "bad.ckpt"


def eval_mindir_without_sidecar(ws, tmp):
    shutil.copy(ws / "model" / "tiny.mindir", tmp / "lonely.mindir")
    return "eval.py", ["--config", str(ws / "cfg.yaml"), "--mindir", str(tmp / "lonely.mindir"),
                       "--data", str(ws / "pre"), "--fold", "0", "--output", str(tmp / "ev")], "lonely"


def eval_mindir_swapped_under_its_sidecar(ws, tmp):
    model = _copy(ws, "model", tmp)
    (model / "tiny.mindir").write_bytes((model / "tiny.mindir").read_bytes() + b"\x00")
    return "eval.py", ["--config", str(ws / "cfg.yaml"), "--mindir", str(model / "tiny.mindir"),
                       "--data", str(ws / "pre"), "--fold", "0", "--output", str(tmp / "ev")], "tiny.mindir"


def predict_into_its_input_folder(ws, tmp):
    flat = tmp / "cts"
    flat.mkdir()
    shutil.copy(ws / "raw" / "case_00000" / "imaging.nii.gz", flat / "patient.nii.gz")
    return "predict.py", ["--config", str(ws / "cfg.yaml"), "--ckpt", str(ws / "model" / "fold_0" /
                          "checkpoint_best.ckpt"), "--input", str(flat), "--output", str(flat)], "patient"


def predict_single_file_into_its_folder(ws, tmp):
    flat = tmp / "cts"
    flat.mkdir()
    shutil.copy(ws / "raw" / "case_00000" / "imaging.nii.gz", flat / "patient.nii.gz")
    return "predict.py", ["--config", str(ws / "cfg.yaml"), "--ckpt", str(ws / "model" / "fold_0" /
                          "checkpoint_best.ckpt"), "--input", str(flat / "patient.nii.gz"), "--output", str(flat)], \
        "patient"


def predict_output_is_a_file(ws, tmp):
    (tmp / "taken").write_text("a user's file")
    return "predict.py", ["--config", str(ws / "cfg.yaml"), "--ckpt", str(ws / "model" / "fold_0" /
                          "checkpoint_best.ckpt"), "--input", str(ws / "raw"), "--output", str(tmp / "taken")], "taken"


def predict_output_under_a_file(ws, tmp):
    (tmp / "taken").write_text("a user's file")
    return "predict.py", ["--config", str(ws / "cfg.yaml"), "--ckpt", str(ws / "model" / "fold_0" /
                          "checkpoint_best.ckpt"), "--input", str(ws / "raw"), "--output", str(tmp / "taken" / "x")], \
        "taken"


def predict_folder_where_a_label_goes(ws, tmp):
    (tmp / "out" / "case_00000.nii.gz").mkdir(parents=True)
    return "predict.py", ["--config", str(ws / "cfg.yaml"), "--ckpt", str(ws / "model" / "fold_0" /
                          "checkpoint_best.ckpt"), "--input", str(ws / "raw"), "--output", str(tmp / "out")], \
        "case_00000.nii.gz"


def predict_missing_input(ws, tmp):
    return "predict.py", ["--config", str(ws / "cfg.yaml"), "--ckpt", str(ws / "model" / "fold_0" /
                          "checkpoint_best.ckpt"), "--input", str(tmp / "nowhere"), "--output", str(tmp / "out")], \
        "nowhere"


def predict_missing_checkpoint(ws, tmp):
    return "predict.py", ["--config", str(ws / "cfg.yaml"), "--ckpt", str(tmp / "none.ckpt"),
                          "--input", str(ws / "raw"), "--output", str(tmp / "out")], "none.ckpt"


def predict_non_nifti_file(ws, tmp):
    (tmp / "scan.txt").write_text("not an image")
    return "predict.py", ["--config", str(ws / "cfg.yaml"), "--ckpt", str(ws / "model" / "fold_0" /
                          "checkpoint_best.ckpt"), "--input", str(tmp / "scan.txt"), "--output", str(tmp / "out")], \
        "scan.txt"


def hides(*modules):
    """Mark a row that runs as if these optional packages were not installed."""
    def mark(row):
        row.hidden_modules = modules
        return row
    return mark


def _series(ws, folder, **damage):
    """The workspace's first raw case as a DICOM CT series in ``folder`` (``damage``: write_ct_series')."""
    from src.data.synthetic_dicom import write_ct_series

    image = nib.load(ws / "raw" / "case_00000" / "imaging.nii.gz")
    write_ct_series(folder, np.asanyarray(image.dataobj), image.header.get_zooms(), **damage)
    return folder


def _predict_dicom(ws, tmp, folder, *extra):
    return "predict.py", ["--config", str(ws / "cfg.yaml"), "--ckpt", str(ws / "model" / "fold_0" /
                          "checkpoint_best.ckpt"), "--input", str(folder), "--output", str(tmp / "out"), *extra]


def predict_dicom_folder_of_two_series(ws, tmp):
    _series(ws, tmp / "ct", series_description="arterial")
    _series(ws, tmp / "ct", series_description="venous", seed="1", prefix="VEN")
    return (*_predict_dicom(ws, tmp, tmp / "ct"), "--series UID")


def predict_dicom_series_that_is_not_in_the_folder(ws, tmp):
    return (*_predict_dicom(ws, tmp, _series(ws, tmp / "ct"), "--series", "1.2.3.4"), "1.2.3.4")


def predict_dicom_series_missing_a_slice(ws, tmp):
    return (*_predict_dicom(ws, tmp, _series(ws, tmp / "ct", skip_slices=(6,))), "missing 1 slice")


def predict_dicom_series_not_ct(ws, tmp):
    return (*_predict_dicom(ws, tmp, _series(ws, tmp / "ct", modality="MR")), "not CT")


def predict_dicom_series_gantry_tilted(ws, tmp):
    return (*_predict_dicom(ws, tmp, _series(ws, tmp / "ct", gantry_tilt_deg=15.0)), "gantry tilt")


def predict_dicom_series_not_axial(ws, tmp):
    return (*_predict_dicom(ws, tmp, _series(ws, tmp / "ct", orientation=(1, 0, 0, 0, 0, -1))), "not axial")


@hides("pydicom")
def predict_dicom_without_the_dicom_packages(ws, tmp):
    return (*_predict_dicom(ws, tmp, _series(ws, tmp / "ct")), "requirements-dicom.txt")


@hides("highdicom")
def predict_dicom_seg_without_highdicom(ws, tmp):
    return (*_predict_dicom(ws, tmp, _series(ws, tmp / "ct"), "--output_format", "dicom_seg"),
            "requirements-dicom.txt")


def predict_dicom_seg_of_a_nifti_input(ws, tmp):
    return (*_predict_dicom(ws, tmp, ws / "raw", "--output_format", "dicom_seg"), "needs a DICOM series")


def export_corrupt_checkpoint(ws, tmp):
    (tmp / "bad.ckpt").write_bytes(b"\x00" * 64)
    return "export.py", ["--config", str(ws / "cfg.yaml"), "--ckpt", str(tmp / "bad.ckpt"),
                         "--file_name", str(tmp / "net")], "bad.ckpt"


def export_over_an_existing_model(ws, tmp):
    model = _copy(ws, "model", tmp)
    return "export.py", ["--config", str(ws / "cfg.yaml"), "--ckpt", str(model / "fold_0" / "checkpoint_best.ckpt"),
                         "--file_name", str(model / "tiny")], "tiny.mindir"


def export_air_on_cpu(ws, tmp):
    return "export.py", ["--config", str(ws / "cfg.yaml"), "--ckpt", str(ws / "model" / "fold_0" /
                         "checkpoint_best.ckpt"), "--file_name", str(tmp / "net"), "--file_format", "AIR"], "AIR"


def bins_missing_data(ws, tmp):
    return "preprocess.py", ["--config", str(ws / "cfg.yaml"), "--data", str(tmp / "nowhere"), "--fold", "0",
                             "--output_path", str(tmp / "bins")], "nowhere"


def runner_missing_mindir(ws, tmp):
    (tmp / "bins").mkdir()
    return "ascend310_infer/mindir_runner.py", ["--mindir", str(tmp / "none.mindir"), "--input", str(tmp / "bins"),
                                                "--output", str(tmp / "results")], "none.mindir"


def stitch_missing_results(ws, tmp):
    return "postprocess.py", ["--config", str(ws / "cfg.yaml"), "--data", str(ws / "pre"), "--fold", "0",
                              "--pre_path", str(tmp / "bins"), "--result_path", str(tmp / "results"),
                              "--output", str(tmp / "ev")], "bins"


def synth_over_a_foreign_folder(ws, tmp):
    (tmp / "mine").mkdir()
    (tmp / "mine" / "notes.txt").write_text("a user's file")
    return "prepare.py", ["synth", "--format", "kits19", "--cases", "1", "--out", str(tmp / "mine")], "mine"


def prepare_empty_raw_folder(ws, tmp):
    (tmp / "empty").mkdir()
    return "prepare.py", ["preprocess", "--raw", str(tmp / "empty"), "--out", str(tmp / "pre"),
                          "--config", str(ws / "cfg.yaml")], "no cases"


def prepare_label_with_negative_values(ws, tmp):
    raw, image, label, affine = _raw_case(tmp)
    _nifti(raw / "case_00000" / "segmentation.nii.gz", label.astype(np.int16) - 1, affine)
    return "prepare.py", ["preprocess", "--raw", str(raw), "--out", str(tmp / "pre"),
                          "--config", str(ws / "cfg.yaml")], "segmentation.nii.gz"


def prepare_image_with_nan(ws, tmp):
    raw, image, label, affine = _raw_case(tmp)
    image = image.astype(np.float32)
    image[0, 0, 0] = np.nan
    _nifti(raw / "case_00000" / "imaging.nii.gz", image, affine)
    return "prepare.py", ["preprocess", "--raw", str(raw), "--out", str(tmp / "pre"),
                          "--config", str(ws / "cfg.yaml")], "NaN"


def prepare_unknown_config_key(ws, tmp):
    (tmp / "cfg.yaml").write_text((ws / "cfg.yaml").read_text() + "learning_rate: 0.1\n")
    return "prepare.py", ["preprocess", "--raw", str(ws / "raw"), "--out", str(tmp / "pre"),
                          "--config", str(tmp / "cfg.yaml")], "learning_rate"


def train_on_a_raw_folder(ws, tmp):
    return "train.py", ["--config", str(ws / "cfg.yaml"), "--data", str(ws / "raw"), "--fold", "0",
                        "--output", str(tmp / "out")], "plans.json"


def train_fold_not_a_number(ws, tmp):
    return "train.py", ["--config", str(ws / "cfg.yaml"), "--data", str(ws / "pre"), "--fold", "first",
                        "--output", str(tmp / "out")], "first"


def eval_prediction_of_another_shape(ws, tmp):
    pred = tmp / "pred"
    for case in sorted((ws / "raw").iterdir()):
        label = nib.load(case / "segmentation.nii.gz")
        _nifti(pred / f"{case.name}.nii.gz", np.asanyarray(label.dataobj)[:-1], label.affine)
    return "eval.py", ["--pred", str(pred), "--ref", str(ws / "raw"), "--metric", "kits19",
                       "--out", str(tmp / "m.csv")], "case_0000"


def eval_missing_prediction_of_a_case(ws, tmp):
    pred = tmp / "pred"
    pred.mkdir()
    for case in sorted((ws / "raw").iterdir())[1:]:
        shutil.copy(case / "segmentation.nii.gz", pred / f"{case.name}.nii.gz")
    return "eval.py", ["--pred", str(pred), "--ref", str(ws / "raw"), "--metric", "kits19",
                       "--out", str(tmp / "m.csv")], "case_00000"


def eval_output_is_the_data_folder(ws, tmp):
    pre = _copy(ws, "pre", tmp)
    return "eval.py", ["--config", str(ws / "cfg.yaml"), "--ckpt", str(ws / "model" / "fold_0" /
                       "checkpoint_best.ckpt"), "--data", str(pre), "--fold", "0", "--output", str(pre)], "pre"


def predict_with_a_decision_of_another_model(ws, tmp):
    model = _copy(ws, "model", tmp)
    other = write_tiny_checkpoint(tmp / "other" / "checkpoint_best.ckpt", seed=3)
    from src.infer.postprocess import save_postprocessing
    save_postprocessing({"all_foreground": True, "per_class": [], "min_component_ml": {}},
                        model / "fold_0" / "postprocessing.json", models=[other])
    (tmp / "auto.yaml").write_text((ws / "cfg.yaml").read_text().replace("postprocess: none", "postprocess: auto"))
    return "predict.py", ["--config", str(tmp / "auto.yaml"), "--ckpt", str(model / "fold_0" / "checkpoint_best.ckpt"),
                          "--input", str(ws / "raw"), "--output", str(tmp / "out")], "postprocessing.json"


def predict_mindir_with_a_foreign_sidecar(ws, tmp):
    shutil.copy(ws / "model" / "tiny.mindir", tmp / "net.mindir")
    (tmp / "net.mindir.json").write_text('{"train": [], "val": []}')
    return "predict.py", ["--config", str(ws / "cfg.yaml"), "--mindir", str(tmp / "net.mindir"),
                          "--input", str(ws / "raw"), "--output", str(tmp / "out")], "net.mindir.json"


def predict_mindir_given_as_checkpoint(ws, tmp):
    return "predict.py", ["--config", str(ws / "cfg.yaml"), "--ckpt", str(ws / "model" / "tiny.mindir"),
                          "--input", str(ws / "raw"), "--output", str(tmp / "out")], "tiny.mindir"


def export_under_a_file(ws, tmp):
    (tmp / "taken").write_text("a user's file")
    return "export.py", ["--config", str(ws / "cfg.yaml"), "--ckpt", str(ws / "model" / "fold_0" /
                         "checkpoint_best.ckpt"), "--file_name", str(tmp / "taken" / "net")], "taken"


def bins_fold_that_does_not_exist(ws, tmp):
    return "preprocess.py", ["--config", str(ws / "cfg.yaml"), "--data", str(ws / "pre"), "--fold", "9",
                             "--output_path", str(tmp / "bins")], "fold"


def runner_empty_input_folder(ws, tmp):
    (tmp / "bins").mkdir()
    return "ascend310_infer/mindir_runner.py", ["--mindir", str(ws / "model" / "tiny.mindir"), "--input",
                                                str(tmp / "bins"), "--output", str(tmp / "results")], "bins"


ROWS = [
    prepare_missing_raw, prepare_pixdim_zero, prepare_singular_affine, prepare_label_geometry_mismatch,
    prepare_label_shape_mismatch, prepare_truncated_image, prepare_out_is_a_file, prepare_missing_config,
    train_missing_data, train_fold_that_does_not_exist, train_over_a_finished_run, train_resume_without_checkpoint,
    train_corrupt_pretrained, train_bad_config_value, train_mixed_preprocessed_folder,
    eval_missing_predictions, eval_flipped_prediction, eval_out_under_a_file, eval_corrupt_checkpoint,
    eval_mindir_without_sidecar, eval_mindir_swapped_under_its_sidecar,
    predict_into_its_input_folder, predict_single_file_into_its_folder, predict_output_is_a_file,
    predict_output_under_a_file, predict_folder_where_a_label_goes, predict_missing_input,
    predict_missing_checkpoint, predict_non_nifti_file,
    export_corrupt_checkpoint, export_over_an_existing_model, export_air_on_cpu,
    bins_missing_data, runner_missing_mindir, stitch_missing_results,
    synth_over_a_foreign_folder, prepare_empty_raw_folder, prepare_label_with_negative_values,
    prepare_image_with_nan, prepare_unknown_config_key, train_on_a_raw_folder, train_fold_not_a_number,
    eval_prediction_of_another_shape, eval_missing_prediction_of_a_case, eval_output_is_the_data_folder,
    predict_with_a_decision_of_another_model, predict_mindir_with_a_foreign_sidecar,
    predict_mindir_given_as_checkpoint, export_under_a_file, bins_fold_that_does_not_exist,
    runner_empty_input_folder,
    predict_dicom_folder_of_two_series, predict_dicom_series_that_is_not_in_the_folder,
    predict_dicom_series_missing_a_slice, predict_dicom_series_not_ct, predict_dicom_series_gantry_tilted,
    predict_dicom_series_not_axial, predict_dicom_without_the_dicom_packages, predict_dicom_seg_without_highdicom,
    predict_dicom_seg_of_a_nifti_input,
]


@pytest.mark.parametrize("row", ROWS, ids=[row.__name__ for row in ROWS])
def test_bad_input_is_one_line_and_destroys_nothing(row, workspace, tmp_path, capsys, restore_mode, monkeypatch):
    script, argv, names = row(workspace, tmp_path)
    for module in getattr(row, "hidden_modules", ()):
        monkeypatch.setitem(sys.modules, module, None)  # ``import module`` raises ImportError
    before_ws, before_tmp = snapshot(workspace), snapshot(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        load_script(script).main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert errors, err
    assert names in errors[-1] or any(names in line for line in errors), err
    assert snapshot(workspace) == before_ws
    after = snapshot(tmp_path)
    assert {k: v for k, v in after.items() if k in before_tmp} == before_tmp, "an existing file was changed"
    assert not [name for name in after if ".tmp-" in name], "a temporary was left behind"


def test_row_count_matches_the_readme():
    """The README's Reliability section quotes how many bad inputs this table covers."""
    readme = (ROOT / "README.md").read_text()
    assert f"{len(ROWS)} bad inputs" in readme


def test_export_never_replaces_a_json_of_someone_else(workspace, tmp_path, capsys, restore_mode):
    pre = _copy(workspace, "pre", tmp_path)
    before = (pre / "splits.json").read_bytes()
    load_script("export.py").main(["--config", str(workspace / "cfg.yaml"), "--ckpt",
                                   str(workspace / "model" / "fold_0" / "checkpoint_best.ckpt"),
                                   "--file_name", str(pre / "splits")])
    capsys.readouterr()
    assert (pre / "splits.json").read_bytes() == before
    assert (pre / "splits.mindir").is_file() and (pre / "splits.mindir.json").is_file()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_is_refused_before_the_model_loads(workspace, tmp_path, capsys, restore_mode):
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o500)
    try:
        with pytest.raises(SystemExit) as exit_info:
            load_script("predict.py").main(["--config", str(workspace / "cfg.yaml"), "--ckpt",
                                            str(workspace / "model" / "fold_0" / "checkpoint_best.ckpt"),
                                            "--input", str(workspace / "raw"), "--output", str(out)])
        assert exit_info.value.code == 2 and "not writable" in capsys.readouterr().err
    finally:
        out.chmod(0o700)

"""Fault rows for eval.py: predictions that are missing, flipped or of another shape; bad checkpoints and MindIR files.

Each row: (workspace, its own tmp folder) -> (script, argv, what the error line must name)."""
import shutil

import nibabel as nib
import numpy as np

from tests.fault_rows.files import copy_from, write_nifti


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
        write_nifti(pred / f"{case.name}.nii.gz", flipped, affine)
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
    model = copy_from(ws, "model", tmp)
    (model / "tiny.mindir").write_bytes((model / "tiny.mindir").read_bytes() + b"\x00")
    return "eval.py", ["--config", str(ws / "cfg.yaml"), "--mindir", str(model / "tiny.mindir"),
                       "--data", str(ws / "pre"), "--fold", "0", "--output", str(tmp / "ev")], "tiny.mindir"


def eval_prediction_of_another_shape(ws, tmp):
    pred = tmp / "pred"
    for case in sorted((ws / "raw").iterdir()):
        label = nib.load(case / "segmentation.nii.gz")
        write_nifti(pred / f"{case.name}.nii.gz", np.asanyarray(label.dataobj)[:-1], label.affine)
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
    pre = copy_from(ws, "pre", tmp)
    return "eval.py", ["--config", str(ws / "cfg.yaml"), "--ckpt", str(ws / "model" / "fold_0" /
                       "checkpoint_best.ckpt"), "--data", str(pre), "--fold", "0", "--output", str(pre)], "pre"


ROWS = [
    eval_missing_predictions, eval_flipped_prediction, eval_out_under_a_file, eval_corrupt_checkpoint,
    eval_mindir_without_sidecar, eval_mindir_swapped_under_its_sidecar, eval_prediction_of_another_shape,
    eval_missing_prediction_of_a_case, eval_output_is_the_data_folder,
]

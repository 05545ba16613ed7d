"""Fault rows for prepare.py (synth, preprocess): missing, empty or damaged raw cases, outputs that are
taken, bad configs.

Each row: (workspace, its own tmp folder) -> (script, argv, what the error line must name)."""
import numpy as np

from tests.fault_rows.files import one_raw_case, write_nifti


def prepare_missing_raw(ws, tmp):
    return "prepare.py", ["preprocess", "--raw", str(tmp / "nowhere"), "--out", str(tmp / "pre"),
                          "--config", str(ws / "cfg.yaml")], "not found"


def prepare_pixdim_zero(ws, tmp):
    raw, image, label, affine = one_raw_case(tmp)
    write_nifti(raw / "case_00000" / "imaging.nii.gz", image, affine, pixdim=(0, 0, 0))
    return "prepare.py", ["preprocess", "--raw", str(raw), "--out", str(tmp / "pre"),
                          "--config", str(ws / "cfg.yaml")], "imaging.nii.gz"


def prepare_singular_affine(ws, tmp):
    raw, image, label, affine = one_raw_case(tmp)
    singular = affine.copy()
    singular[:3, 2] = 0
    write_nifti(raw / "case_00000" / "imaging.nii.gz", image, singular, qform_code=0)  # a qform cannot hold it
    return "prepare.py", ["preprocess", "--raw", str(raw), "--out", str(tmp / "pre"),
                          "--config", str(ws / "cfg.yaml")], "imaging.nii.gz"


def prepare_label_geometry_mismatch(ws, tmp):
    raw, image, label, affine = one_raw_case(tmp)
    moved = affine.copy()
    moved[:3, :3] *= 1.5
    moved[:3, 3] += 40
    write_nifti(raw / "case_00000" / "segmentation.nii.gz", label, moved)
    return "prepare.py", ["preprocess", "--raw", str(raw), "--out", str(tmp / "pre"),
                          "--config", str(ws / "cfg.yaml")], "segmentation.nii.gz"


def prepare_label_shape_mismatch(ws, tmp):
    raw, image, label, affine = one_raw_case(tmp)
    write_nifti(raw / "case_00000" / "segmentation.nii.gz", label[:-1], affine)
    return "prepare.py", ["preprocess", "--raw", str(raw), "--out", str(tmp / "pre"),
                          "--config", str(ws / "cfg.yaml")], "shape"


def prepare_truncated_image(ws, tmp):
    raw, image, label, affine = one_raw_case(tmp)
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


def synth_over_a_foreign_folder(ws, tmp):
    (tmp / "mine").mkdir()
    (tmp / "mine" / "notes.txt").write_text("a user's file")
    return "prepare.py", ["synth", "--format", "kits19", "--cases", "1", "--out", str(tmp / "mine")], "mine"


def prepare_empty_raw_folder(ws, tmp):
    (tmp / "empty").mkdir()
    return "prepare.py", ["preprocess", "--raw", str(tmp / "empty"), "--out", str(tmp / "pre"),
                          "--config", str(ws / "cfg.yaml")], "no cases"


def prepare_label_with_negative_values(ws, tmp):
    raw, image, label, affine = one_raw_case(tmp)
    write_nifti(raw / "case_00000" / "segmentation.nii.gz", label.astype(np.int16) - 1, affine)
    return "prepare.py", ["preprocess", "--raw", str(raw), "--out", str(tmp / "pre"),
                          "--config", str(ws / "cfg.yaml")], "segmentation.nii.gz"


def prepare_image_with_nan(ws, tmp):
    raw, image, label, affine = one_raw_case(tmp)
    image = image.astype(np.float32)
    image[0, 0, 0] = np.nan
    write_nifti(raw / "case_00000" / "imaging.nii.gz", image, affine)
    return "prepare.py", ["preprocess", "--raw", str(raw), "--out", str(tmp / "pre"),
                          "--config", str(ws / "cfg.yaml")], "NaN"


def prepare_unknown_config_key(ws, tmp):
    (tmp / "cfg.yaml").write_text((ws / "cfg.yaml").read_text() + "learning_rate: 0.1\n")
    return "prepare.py", ["preprocess", "--raw", str(ws / "raw"), "--out", str(tmp / "pre"),
                          "--config", str(tmp / "cfg.yaml")], "learning_rate"


ROWS = [
    prepare_missing_raw, prepare_pixdim_zero, prepare_singular_affine, prepare_label_geometry_mismatch,
    prepare_label_shape_mismatch, prepare_truncated_image, prepare_out_is_a_file, prepare_missing_config,
    synth_over_a_foreign_folder, prepare_empty_raw_folder, prepare_label_with_negative_values,
    prepare_image_with_nan, prepare_unknown_config_key,
]

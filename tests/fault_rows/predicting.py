"""Fault rows for predict.py on NIfTI: outputs that would overwrite inputs or users' files, bad inputs and models.

Each row: (workspace, its own tmp folder) -> (script, argv, what the error line must name)."""
import shutil

from tests.fault_rows.files import copy_from
from tests.infer.tiny_model import write_tiny_checkpoint


def predict(ws, input_path, output, *extra, model=None):
    """predict.py's argv with the workspace's config and (unless ``model``) its checkpoint."""
    model = model or ["--ckpt", str(ws / "model" / "fold_0" / "checkpoint_best.ckpt")]
    return "predict.py", ["--config", str(ws / "cfg.yaml"), *model, "--input", str(input_path), "--output",
                          str(output), *extra]


def predict_into_its_input_folder(ws, tmp):
    flat = tmp / "cts"
    flat.mkdir()
    shutil.copy(ws / "raw" / "case_00000" / "imaging.nii.gz", flat / "patient.nii.gz")
    return (*predict(ws, flat, flat), "patient")


def predict_single_file_into_its_folder(ws, tmp):
    flat = tmp / "cts"
    flat.mkdir()
    shutil.copy(ws / "raw" / "case_00000" / "imaging.nii.gz", flat / "patient.nii.gz")
    return (*predict(ws, flat / "patient.nii.gz", flat), "patient")


def predict_output_is_a_file(ws, tmp):
    (tmp / "taken").write_text("a user's file")
    return (*predict(ws, ws / "raw", tmp / "taken"), "taken")


def predict_output_under_a_file(ws, tmp):
    (tmp / "taken").write_text("a user's file")
    return (*predict(ws, ws / "raw", tmp / "taken" / "x"), "taken")


def predict_folder_where_a_label_goes(ws, tmp):
    (tmp / "out" / "case_00000.nii.gz").mkdir(parents=True)
    return (*predict(ws, ws / "raw", tmp / "out"), "case_00000.nii.gz")


def predict_missing_input(ws, tmp):
    return (*predict(ws, tmp / "nowhere", tmp / "out"), "nowhere")


def predict_missing_checkpoint(ws, tmp):
    return (*predict(ws, ws / "raw", tmp / "out", model=["--ckpt", str(tmp / "none.ckpt")]), "none.ckpt")


def predict_non_nifti_file(ws, tmp):
    (tmp / "scan.txt").write_text("not an image")
    return (*predict(ws, tmp / "scan.txt", tmp / "out"), "scan.txt")


def predict_with_a_decision_of_another_model(ws, tmp):
    model = copy_from(ws, "model", tmp)
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
    return (*predict(ws, ws / "raw", tmp / "out", model=["--mindir", str(tmp / "net.mindir")]), "net.mindir.json")


def predict_mindir_given_as_checkpoint(ws, tmp):
    return (*predict(ws, ws / "raw", tmp / "out", model=["--ckpt", str(ws / "model" / "tiny.mindir")]), "tiny.mindir")


ROWS = [
    predict_into_its_input_folder, predict_single_file_into_its_folder, predict_output_is_a_file,
    predict_output_under_a_file, predict_folder_where_a_label_goes, predict_missing_input,
    predict_missing_checkpoint, predict_non_nifti_file, predict_with_a_decision_of_another_model,
    predict_mindir_with_a_foreign_sidecar, predict_mindir_given_as_checkpoint,
]

"""Fault rows for export.py and the Ascend 310 flow (preprocess.py, the MindIR runner, postprocess.py).

Each row: (workspace, its own tmp folder) -> (script, argv, what the error line must name)."""
from tests.fault_rows.files import copy_from


def export_corrupt_checkpoint(ws, tmp):
    (tmp / "bad.ckpt").write_bytes(b"\x00" * 64)
    return "export.py", ["--config", str(ws / "cfg.yaml"), "--ckpt", str(tmp / "bad.ckpt"),
                         "--file_name", str(tmp / "net")], "bad.ckpt"


def export_over_an_existing_model(ws, tmp):
    model = copy_from(ws, "model", tmp)
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
    export_corrupt_checkpoint, export_over_an_existing_model, export_air_on_cpu, bins_missing_data,
    runner_missing_mindir, stitch_missing_results, export_under_a_file, bins_fold_that_does_not_exist,
    runner_empty_input_folder,
]

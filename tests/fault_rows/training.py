"""Fault rows for train.py: missing or mismatched data, folds, finished runs, resume and pretrained checkpoints.

Each row: (workspace, its own tmp folder) -> (script, argv, what the error line must name)."""
import json
import shutil

from tests.fault_rows.files import copy_from


def train(ws, data, output, fold, *extra):
    """train.py's argv with the workspace's config."""
    return "train.py", ["--config", str(ws / "cfg.yaml"), "--data", str(data), "--fold", fold, "--output",
                        str(output), *extra]


def train_missing_data(ws, tmp):
    return (*train(ws, tmp / "nowhere", tmp / "out", "0"), "nowhere")


def train_fold_that_does_not_exist(ws, tmp):
    return (*train(ws, ws / "pre", tmp / "out", "7"), "fold")


def train_over_a_finished_run(ws, tmp):
    out = tmp / "out"
    (out / "fold_0").mkdir(parents=True)
    shutil.copy(ws / "model" / "fold_0" / "checkpoint_best.ckpt", out / "fold_0" / "checkpoint_latest.ckpt")
    shutil.copy(ws / "model" / "fold_0" / "checkpoint_best.ckpt", out / "fold_0" / "checkpoint_best.ckpt")
    return (*train(ws, ws / "pre", out, "0"), "--resume")


def train_resume_without_checkpoint(ws, tmp):
    return (*train(ws, ws / "pre", tmp / "out", "0", "--resume"), "checkpoint")


def train_corrupt_pretrained(ws, tmp):
    (tmp / "bad.ckpt").write_bytes(b"\x00" * 64)
    return (*train(ws, ws / "pre", tmp / "out", "0", "--pretrained", str(tmp / "bad.ckpt")), "bad.ckpt")


def train_bad_config_value(ws, tmp):
    return (*train(ws, ws / "pre", tmp / "out", "0", "--epochs", "0"), "epochs")


def train_mixed_preprocessed_folder(ws, tmp):
    pre = copy_from(ws, "pre", tmp)
    plans = json.loads((pre / "plans.json").read_text())
    plans["target_spacing"] = [2.0, 1.0, 1.0]
    (pre / "plans.json").write_text(json.dumps(plans))
    return (*train(ws, pre, tmp / "out", "0", "--target_spacing", "2.0", "1.0", "1.0"), "plan")


def train_on_a_raw_folder(ws, tmp):
    return (*train(ws, ws / "raw", tmp / "out", "0"), "plans.json")


def train_fold_not_a_number(ws, tmp):
    return (*train(ws, ws / "pre", tmp / "out", "first"), "first")


ROWS = [
    train_missing_data, train_fold_that_does_not_exist, train_over_a_finished_run, train_resume_without_checkpoint,
    train_corrupt_pretrained, train_bad_config_value, train_mixed_preprocessed_folder, train_on_a_raw_folder,
    train_fold_not_a_number,
]

"""Starting a run in a fold folder: an existing run is refused without --resume/--overwrite, --overwrite
leaves nothing of the old run, leftovers of killed writers go; one epoch's writes and their failures."""
import hashlib
import json
import os

import pytest
import mindspore as ms
from mindspore import nn

import src.files
from src.errors import UserError
from src.infer.postprocess import POSTPROCESSING_FILE
from src.train import run_folder
from src.runtime.checkpoint import read_training_checkpoint
from src.runtime.device import setup_device
from src.train.run_folder import (BEST, LATEST, LOG, PREVIOUS, PROGRESS, RUN_FILES, TRANSFER_REPORT,
                                  check_run_folder, commit_epoch, reconcile_log)
from src.train.run_state import RunState, TrainingLog
from src.train.trainer import train_fold
from tests.train.tiny_training import ROOT, tiny_config
from tests.helpers import dead_pid, load_script

setup_device("CPU", mode="pynative")


def folder_digests(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def old_run(fold_dir):
    """A fold folder as a finished run and an eval.py decision leave it (file contents do not matter here)."""
    fold_dir.mkdir(parents=True)
    for name in (LATEST, PREVIOUS, BEST, PROGRESS, TRANSFER_REPORT, "config.yaml", "plans.json"):
        (fold_dir / name).write_bytes(b"old " + name.encode())
    (fold_dir / LOG).write_text("2024-01-01 00:00:00  epoch 1/1  train_loss 9.0000  old run\n")
    (fold_dir / POSTPROCESSING_FILE).write_text(json.dumps({"all_foreground": True, "per_class": [1]}))
    return fold_dir


def test_postprocessing_name_is_eval_s():
    assert run_folder.POSTPROCESSING == POSTPROCESSING_FILE


def test_a_new_run_refuses_a_folder_holding_a_run_and_touches_nothing(tiny_data, tmp_path):
    fold_dir = old_run(tmp_path / "fold_0")
    before = folder_digests(fold_dir)
    with pytest.raises(UserError) as refused:
        train_fold(tiny_config(), tiny_data, 0, tmp_path)
    message = str(refused.value)
    assert str(fold_dir) in message and "--resume" in message and "--overwrite" in message
    assert "\n" not in message
    assert folder_digests(fold_dir) == before


@pytest.mark.parametrize("name", RUN_FILES)
def test_any_file_of_a_run_counts_as_a_run(tmp_path, name):
    (tmp_path / name).write_text("x")
    with pytest.raises(UserError, match="already holds a training run"):
        check_run_folder(tmp_path, resume=False, overwrite=False)
    check_run_folder(tmp_path, resume=False, overwrite=True)


def test_train_py_refuses_in_one_error_line(tiny_data, tmp_path, capsys):
    fold_dir = old_run(tmp_path / "fold_0")
    before = folder_digests(fold_dir)
    script = load_script("train")
    with pytest.raises(SystemExit) as exit_info:
        script.main(["--config", str(ROOT / "config" / "demo.yaml"), "--data", str(tiny_data), "--fold", "0",
                     "--output", str(tmp_path), "--device_target", "CPU", "--target_spacing", "null"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and str(fold_dir) in err[0]
    assert "--resume" in err[0] and "--overwrite" in err[0]
    assert folder_digests(fold_dir) == before
    assert "--overwrite" in script.build_parser().format_help() and "--overwrite" in script.__doc__
    with pytest.raises(SystemExit):
        script.build_parser().parse_args(["--config", "c", "--data", "d", "--fold", "0", "--output", "o",
                                          "--resume", "--overwrite"])


def test_resume_and_overwrite_exclude_each_other(tmp_path):
    with pytest.raises(UserError, match="pass one"):
        check_run_folder(tmp_path, resume=True, overwrite=True)


def test_an_empty_or_absent_fold_folder_is_fine(tiny_data, tmp_path):
    (tmp_path / "empty" / "fold_0").mkdir(parents=True)
    for out in (tmp_path / "empty", tmp_path / "absent"):
        result = train_fold(tiny_config(), tiny_data, 0, out, stop_after_epoch=0)
        assert result["epochs_completed"] == 0 and (out / "fold_0" / LOG).is_file()


def test_overwrite_deletes_the_old_run_and_its_derived_files(tiny_data, tmp_path):
    fold_dir = old_run(tmp_path / "fold_0")
    (fold_dir / "notes.txt").write_text("the user's own file")
    train_fold(tiny_config(), tiny_data, 0, tmp_path, overwrite=True, stop_after_epoch=0)
    for name in (LATEST, PREVIOUS, BEST, PROGRESS, TRANSFER_REPORT, POSTPROCESSING_FILE):
        assert not (fold_dir / name).exists(), name
    log = (fold_dir / LOG).read_text()
    assert "old run" not in log and "--overwrite: deleted the previous run's" in log
    assert (fold_dir / "config.yaml").read_bytes() != b"old config.yaml"
    assert json.loads((fold_dir / "plans.json").read_text())["patch_size"] == [16, 16, 16]
    assert (fold_dir / "notes.txt").read_text() == "the user's own file"


def test_resume_without_checkpoint_in_a_started_run_points_to_overwrite(tmp_path):
    (tmp_path / LOG).write_text("2024-01-01 00:00:00  fold 0: ...\n")
    with pytest.raises(UserError, match="no checkpoint to resume from.*--overwrite"):
        check_run_folder(tmp_path, resume=True, overwrite=False)


def test_leftovers_of_killed_writers_are_removed_at_start(tiny_data, tmp_path):
    fold_dir = tmp_path / "fold_0"
    fold_dir.mkdir()
    stale = [fold_dir / f"{LATEST}.tmp-{dead_pid()}.ckpt", fold_dir / f"{LOG}.tmp-{dead_pid()}"]
    alive = fold_dir / f"{BEST}.tmp-{os.getppid()}"   # a running process's write in progress
    for path in stale + [alive]:
        path.write_bytes(b"partial")
    # temporaries are no run: the folder counts as empty
    train_fold(tiny_config(), tiny_data, 0, tmp_path, stop_after_epoch=0)
    assert not any(path.exists() for path in stale)
    assert alive.exists()
    assert "removed 2 leftover temporary file(s)" in (fold_dir / LOG).read_text()


# ---------------------------------------------------------------- one epoch's writes, without a network

def _cell():
    ms.set_seed(0)
    net = nn.Dense(3, 2)
    opt = nn.SGD(net.trainable_params(), learning_rate=ms.Tensor(0.1, ms.float32), momentum=0.9)
    return nn.TrainOneStepCell(nn.WithLossCell(net, nn.MSELoss()), opt)


def _meta(state: RunState, log: TrainingLog) -> dict:
    return {"state": state.to_json(), "log": list(log.lines)}


def _epoch(fold_dir, cell, state, log, ema):
    state.ema = ema
    is_best = state.record_epoch(1.0, 1.0, ema, 0.01, 1.0)
    log.stage(f"epoch {state.epoch}/9  train_loss 1.0000")
    commit_epoch(fold_dir, cell, _meta(state, log), write_best=is_best, log=log)


def test_commit_epoch_rotates_the_latest_and_copies_a_new_best(tmp_path):
    cell, state, log = _cell(), RunState(), TrainingLog(tmp_path / LOG)
    _epoch(tmp_path, cell, state, log, 0.5)
    assert not (tmp_path / PREVIOUS).exists()
    assert (tmp_path / BEST).read_bytes() == (tmp_path / LATEST).read_bytes()
    first = (tmp_path / LATEST).read_bytes()
    _epoch(tmp_path, cell, state, log, 0.4)           # not a new best
    assert (tmp_path / PREVIOUS).read_bytes() == first == (tmp_path / BEST).read_bytes()
    latest = read_training_checkpoint(tmp_path / LATEST)[1]
    assert latest["state"]["epoch"] == 2 and latest["state"]["best_epoch"] == 1
    assert (tmp_path / LOG).read_text().splitlines() == latest["log"]
    assert (tmp_path / PROGRESS).is_file()


@pytest.mark.parametrize("failing, expected", [
    (PREVIOUS, "checkpoint_latest.ckpt still holds epoch 1; continue with --resume"),
    (LATEST, "checkpoint_latest.ckpt still holds epoch 1; continue with --resume"),
    (BEST, "epoch 2 is saved in checkpoint_latest.ckpt; continue with --resume, which repairs checkpoint_best.ckpt"),
    (PROGRESS, "epoch 2 is saved in checkpoint_latest.ckpt"),
])
def test_a_failed_write_stops_with_one_line_and_keeps_what_was_written(tmp_path, monkeypatch, failing, expected):
    cell, state, log = _cell(), RunState(), TrainingLog(tmp_path / LOG)
    _epoch(tmp_path, cell, state, log, 0.5)
    first = (tmp_path / LATEST).read_bytes()
    real_commit = src.files.commit

    def disk_full(tmp, path):
        if os.path.basename(path) == failing:
            raise OSError(28, "No space left on device")
        real_commit(tmp, path)

    monkeypatch.setattr(src.files, "commit", disk_full)
    with pytest.raises(UserError) as failure:
        _epoch(tmp_path, cell, state, log, 0.6)
    message = str(failure.value)
    assert "No space left on device" in message and expected in message and "\n" not in message
    assert str(tmp_path / failing) in message
    latest_epoch = read_training_checkpoint(tmp_path / LATEST)[1]["state"]["epoch"]
    assert latest_epoch == (1 if failing in (PREVIOUS, LATEST) else 2)
    if failing in (PREVIOUS, LATEST):
        assert (tmp_path / LATEST).read_bytes() == first
    assert not list(tmp_path.glob("*.tmp-*"))


def test_a_failed_first_save_says_no_epoch_was_saved(tmp_path, monkeypatch):
    monkeypatch.setattr(src.files, "commit", lambda tmp, path: (_ for _ in ()).throw(OSError(28, "No space")))
    with pytest.raises(UserError, match="no epoch was saved; start again with --overwrite"):
        _epoch(tmp_path, _cell(), RunState(), TrainingLog(tmp_path / LOG), 0.5)


def test_reconcile_log_keeps_closing_lines_and_drops_uncommitted_epochs(tmp_path):
    path = tmp_path / LOG
    committed = ["t0  fold 0: ...", "2024-01-01 00:00:01  epoch 1/3  train_loss 1.0"]
    path.write_text("\n".join(committed + ["2024-01-01 00:00:02  finished 1/3 epochs"]) + "\n")
    assert reconcile_log(path, committed) == ""
    path.write_text("\n".join(committed + ["2024-01-01 00:00:03  epoch 2/3  train_loss 0.9"]) + "\n")
    assert "1 epoch line(s) no checkpoint holds" in reconcile_log(path, committed)
    assert path.read_text().splitlines() == committed
    path.write_text("\n".join(committed) + "\n2024-01-01 00:00:03  epo")
    assert "torn last line" in reconcile_log(path, committed)
    assert path.read_text().splitlines() == committed
    # a checkpoint of an older version records no log: only the torn line goes
    path.write_text("a\nb\nhalf")
    assert reconcile_log(path, None) and path.read_text() == "a\nb\n"
    assert reconcile_log(path, None) == ""


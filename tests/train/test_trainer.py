import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from src.errors import UserError
from src.runtime.checkpoint import read_training_checkpoint
from src.train import trainer
from src.train.run_state import RunState, epoch_line
from src.runtime.device import setup_device
from src.train.schedule import epochs_within_budget, poly_lr
from src.train.trainer import BEST, LATEST, LOG, PROGRESS, TRANSFER_REPORT, train_fold
from tests.data.preprocessed_fixture import make_preprocessed_folder
from tests.train.tiny_training import ROOT, TINY_STRIDES, tiny_config

# MindSpore fixes the device when the first kernel runs; pytest imports every test module before running
# any test, so choosing it here keeps train_fold's own setup_device call valid in a whole-suite run.
setup_device("CPU", mode="pynative")


@pytest.fixture(scope="module")
def straight_run(tiny_data, tmp_path_factory):
    """Two epochs without interruption, shared by the tests that inspect a finished run."""
    out = tmp_path_factory.mktemp("straight")
    return train_fold(tiny_config(), tiny_data, 0, out), out


def _network_weights(path):
    params, _ = read_training_checkpoint(path)
    return {name: p.asnumpy() for name, p in params.items()}


def test_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(tiny_data, straight_run, tmp_path):
    cfg = tiny_config()
    straight, straight_dir = straight_run
    assert straight["epochs_completed"] == 2

    first = train_fold(cfg, tiny_data, 0, tmp_path / "resumed", stop_after_epoch=1)
    assert first["epochs_completed"] == 1
    _, meta = read_training_checkpoint(tmp_path / "resumed" / "fold_0" / LATEST)
    assert meta["state"]["epoch"] == 1
    after_first_epoch = _network_weights(tmp_path / "resumed" / "fold_0" / LATEST)
    second = train_fold(cfg, tiny_data, 0, tmp_path / "resumed", resume=True)
    assert second["epochs_completed"] == 2

    expected = _network_weights(straight_dir / "fold_0" / LATEST)
    resumed = _network_weights(tmp_path / "resumed" / "fold_0" / LATEST)
    assert expected.keys() == resumed.keys()
    assert any(name.startswith("accum.") for name in expected)
    for name, value in expected.items():
        np.testing.assert_allclose(resumed[name], value, rtol=1e-5, atol=1e-6, err_msg=name)
    # the second epoch moved the weights, so the equality above is not trivially true
    assert any(not np.allclose(after_first_epoch[name], expected[name]) for name in expected)
    np.testing.assert_allclose(second["history"]["train_loss"], straight["history"]["train_loss"], rtol=1e-5)


def test_adamw_run_resumes_exactly(tiny_data, tmp_path):
    cfg = tiny_config(optimizer="adamw", lr=0.003, iters_per_epoch=1)
    train_fold(cfg, tiny_data, 0, tmp_path / "straight")
    train_fold(cfg, tiny_data, 0, tmp_path / "resumed", stop_after_epoch=1)
    train_fold(cfg, tiny_data, 0, tmp_path / "resumed", resume=True)
    expected = _network_weights(tmp_path / "straight" / "fold_0" / LATEST)
    resumed = _network_weights(tmp_path / "resumed" / "fold_0" / LATEST)
    assert any(name.startswith("adam_v.") for name in expected)
    for name, value in expected.items():
        np.testing.assert_allclose(resumed[name], value, rtol=1e-5, atol=1e-6, err_msg=name)


def test_run_writes_checkpoints_log_curve_and_copies(tiny_data, straight_run):
    cfg = tiny_config()
    result, out = straight_run
    fold_dir = out / "fold_0"
    for name in (LATEST, BEST, LOG, PROGRESS, "config.yaml", "plans.json"):
        assert (fold_dir / name).is_file(), name
    assert not [n for n in os.listdir(fold_dir) if ".tmp" in n]
    assert (fold_dir / PROGRESS).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    epoch_lines = [line for line in (fold_dir / LOG).read_text().splitlines() if "train_loss" in line]
    assert len(epoch_lines) == 2 and "pseudo_dice [" in epoch_lines[0] and "ema" in epoch_lines[0]

    _, meta = read_training_checkpoint(fold_dir / LATEST)
    stored_plan = json.loads((tiny_data / "plans.json").read_text())
    assert meta["plan"]["target_spacing"] == stored_plan["target_spacing"]
    assert meta["plan"]["patch_size"] == [16, 16, 16] and meta["plan"]["features"][0] == cfg.base_features
    assert meta["config"]["epochs"] == 2 and meta["fold"] == 0
    history = meta["state"]["history"]
    assert history["lr"] == pytest.approx([poly_lr(cfg.lr, e, 2, cfg.poly_exponent) for e in range(2)])
    assert len(history["pseudo_dice"]) == 2 and all(0.0 <= d <= 1.0 for d in history["pseudo_dice"])
    assert result["best_ema"] == pytest.approx(max(history["ema_dice"]))
    _, best_meta = read_training_checkpoint(fold_dir / BEST)
    assert best_meta["state"]["epoch"] == result["best_epoch"]


def test_pretrained_weights_transfer_into_a_network_with_another_head(tiny_data, tmp_path):
    cfg = tiny_config(epochs=1, iters_per_epoch=1, val_iters=0)
    train_fold(cfg, tiny_data, 0, tmp_path / "source")
    source = tmp_path / "source" / "fold_0" / LATEST
    # without validation the best checkpoint follows the latest
    assert (tmp_path / "source" / "fold_0" / BEST).read_bytes() == source.read_bytes()

    four_classes = tmp_path / "pre4"
    make_preprocessed_folder(four_classes, patch_size=(16, 16, 16), strides=TINY_STRIDES)
    plan = json.loads((four_classes / "plans.json").read_text())
    plan["num_classes"] = 4
    plan["labels"]["cyst"] = 3
    (four_classes / "plans.json").write_text(json.dumps(plan))
    train_fold(cfg, four_classes, 0, tmp_path / "target", pretrained=source)
    report = json.loads((tmp_path / "target" / "fold_0" / TRANSFER_REPORT).read_text())
    assert report["loaded"] and report["skipped"]
    assert all("head" in name for name in report["skipped"])
    assert not any(name.startswith(("accum.", "stat.")) for name in report["loaded"] + report["skipped"])
    assert any("encoder" in name for name in report["loaded"])


@pytest.mark.parametrize("fold", [3, "x"])
def test_unknown_fold_is_a_user_error(tiny_data, tmp_path, fold):
    with pytest.raises(UserError, match="fold"):
        train_fold(tiny_config(), tiny_data, fold, tmp_path)


def test_resume_without_a_checkpoint_is_a_user_error(tiny_data, tmp_path):
    with pytest.raises(UserError, match="no checkpoint to resume"):
        train_fold(tiny_config(), tiny_data, 0, tmp_path, resume=True)


def test_missing_preprocessed_folder_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="plans file not found"):
        train_fold(tiny_config(), tmp_path / "nothing", 0, tmp_path)


def test_run_state_tracks_the_best_ema():
    state = RunState()
    state.ema = 0.5
    assert state.record_epoch(1.0, 0.9, 0.5, 0.01, 3.0)
    state.ema = 0.4
    assert not state.record_epoch(0.9, 0.8, 0.3, 0.009, 3.0)
    state.ema = 0.6
    assert state.record_epoch(0.8, 0.7, 0.9, 0.008, 3.0)
    assert (state.epoch, state.best_epoch, state.best_ema) == (3, 3, 0.6)
    assert RunState.from_json(json.loads(json.dumps(state.to_json()))).to_json() == state.to_json()
    line = epoch_line(3, 10, 0.8, None, [0.9, float("nan")], 0.6, 0.008, 3.0, True)
    assert "val_loss n/a" in line and "[0.9000, n/a]" in line and "(new best)" in line


def test_train_py_reports_user_errors_in_one_line(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "train.py"), "--config", str(ROOT / "config" / "demo.yaml"),
                             "--data", str(tmp_path / "missing"), "--fold", "0", "--output", str(tmp_path / "out")],
                            capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: plans file not found")
    assert "Traceback" not in result.stderr


def test_train_py_refuses_a_micro_batch_size_not_dividing_the_batch_in_one_line(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "train.py"), "--config", str(ROOT / "config" / "demo.yaml"),
                             "--data", str(tmp_path / "missing"), "--fold", "0", "--output", str(tmp_path / "out"),
                             "--micro_batch_size", "3"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == ("error: config key 'micro_batch_size' must be auto or a whole number dividing "
                                     "batch_size 2, got '3'")


def test_micro_batched_session_resumes_into_the_weights_of_a_whole_batch_run(tiny_data, straight_run, tmp_path):
    # the straight run chose the whole batch (auto, a tiny network); here epoch 1 runs in micro-batches of 1
    # and the resumed epoch 2 as one forward: same batches, same weights
    out = tmp_path / "mixed"
    train_fold(tiny_config(micro_batch_size=1), tiny_data, 0, out, stop_after_epoch=1)
    result = train_fold(tiny_config(micro_batch_size=2), tiny_data, 0, out, resume=True)
    straight, straight_dir = straight_run
    expected = _network_weights(straight_dir / "fold_0" / LATEST)
    resumed = _network_weights(out / "fold_0" / LATEST)
    assert expected.keys() == resumed.keys()
    for name, value in expected.items():
        np.testing.assert_allclose(resumed[name], value, rtol=1e-4, atol=1e-6, err_msg=name)
    np.testing.assert_allclose(result["history"]["train_loss"], straight["history"]["train_loss"], rtol=1e-4)
    # each line after its time stamp
    lines = [line.split("  ", 1)[1] for line in (out / "fold_0" / LOG).read_text().splitlines()]
    assert "batch 2 as 2 micro-batches of 1 (micro_batch_size 1)" in lines
    assert "batch 2 as one forward (micro_batch_size 2)" in lines
    straight_lines = [line.split("  ", 1)[1] for line in (straight_dir / "fold_0" / LOG).read_text().splitlines()]
    assert any(line.startswith("batch 2 as one forward (estimated ") for line in straight_lines)


@pytest.mark.slow
def test_a_run_that_cannot_fit_stops_before_touching_the_fold_folder(tiny_data, straight_run, tmp_path, monkeypatch):
    # --overwrite would delete the finished run first: the memory check must come before it
    import shutil

    from src.train import micro_batches
    out = tmp_path / "kept"
    shutil.copytree(straight_run[1], out)
    before = {p.name: p.read_bytes() for p in (out / "fold_0").iterdir() if p.is_file()}
    monkeypatch.setattr(micro_batches, "process_memory_budget", lambda sharers=1: 1_000_000)
    with pytest.raises(UserError, match=r"needs about .* GB even with one sample per forward .* --micro_batch_size 1"):
        train_fold(tiny_config(), tiny_data, 0, out, overwrite=True)
    assert {p.name: p.read_bytes() for p in (out / "fold_0").iterdir() if p.is_file()} == before


def test_float16_loss_scale_path_runs_and_resumes_exactly(tiny_data, tmp_path):
    # amp O2 is what Ascend uses; MindSpore's CPU back end runs float16 Conv3d too, slowly
    cfg = tiny_config(amp_level="O2", iters_per_epoch=1)
    straight = train_fold(cfg, tiny_data, 0, tmp_path / "straight")
    train_fold(cfg, tiny_data, 0, tmp_path / "resumed", stop_after_epoch=1)
    train_fold(cfg, tiny_data, 0, tmp_path / "resumed", resume=True)
    expected = _network_weights(tmp_path / "straight" / "fold_0" / LATEST)
    resumed = _network_weights(tmp_path / "resumed" / "fold_0" / LATEST)
    assert "scale_sense" in expected
    for name, value in expected.items():
        np.testing.assert_allclose(resumed[name], value, rtol=1e-5, atol=1e-6, err_msg=name)
    assert "loss_scale" in (tmp_path / "straight" / "fold_0" / LOG).read_text()
    assert straight["epochs_completed"] == 2


# ---------------------------------------------------------------- train_minutes

class TenSecondClock:
    """Each reading is 10 s after the previous one: every batch the first epoch times takes 10 s."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        self.now += 10.0
        return self.now


# With the clock above, 2 iterations and 1 validation batch per epoch: an epoch is measured at
# 2 x 10 + 1 x 10 = 30 s, and 60 s have gone by at the end of epoch 1 (six readings: the run's start,
# three per batch loop's start and batches, less the start itself). 1.75 minutes = 105 s then hold
# 1 + floor(45 / 30) = 2 of the 3 configured epochs.
BUDGET = dict(epochs=3, train_minutes=1.75)


def _log_text(out):
    return (out / "fold_0" / LOG).read_text()


def test_train_minutes_chooses_the_epochs_and_the_run_equals_one_configured_with_them(tiny_data, straight_run,
                                                                                      tmp_path, monkeypatch):
    monkeypatch.setattr(trainer, "clock", TenSecondClock())
    result = train_fold(tiny_config(**BUDGET), tiny_data, 0, tmp_path / "budget")
    assert result["epochs"] == 2 and result["epochs_completed"] == 2
    _, meta = read_training_checkpoint(tmp_path / "budget" / "fold_0" / LATEST)
    budget = meta["state"]["budget"]
    assert budget == epochs_within_budget(1.75, 30.0, cap=3, spent_seconds=60.0, finished_epochs=1).to_json()
    log = _log_text(tmp_path / "budget")
    assert "train_minutes 1.75: epoch 30.0 s measured" in log
    assert "2 of 3 epochs fit; the poly LR schedule runs over 2" in log
    assert "at most 3 epochs (train_minutes 1.75 chooses after epoch 1)" in log
    assert "epoch 1/2  train_loss" in log and "epoch 2/2  train_loss" in log
    # the choice is made before epoch 2 sets its rate, so the schedule is the 2-epoch one from epoch 0 on
    history = meta["state"]["history"]
    assert history["lr"] == pytest.approx([poly_lr(0.01, e, 2, 0.9) for e in range(2)])
    # ... and the run is the run configured with epochs: 2 (the straight run), weight for weight
    straight_weights = _network_weights(straight_run[1] / "fold_0" / LATEST)
    budget_weights = _network_weights(tmp_path / "budget" / "fold_0" / LATEST)
    for name, value in straight_weights.items():
        np.testing.assert_allclose(budget_weights[name], value, rtol=1e-5, atol=1e-6, err_msg=name)


def test_resume_keeps_the_recorded_epoch_count(tiny_data, straight_run, tmp_path, monkeypatch):
    monkeypatch.setattr(trainer, "clock", TenSecondClock())
    train_fold(tiny_config(**BUDGET), tiny_data, 0, tmp_path / "run", stop_after_epoch=1)
    _, meta = read_training_checkpoint(tmp_path / "run" / "fold_0" / LATEST)
    assert meta["state"]["epoch"] == 1 and meta["state"]["budget"]["epochs"] == 2
    # the resumed session would fit all 3 epochs in its budget (a quieter machine, a larger budget),
    # but the run keeps the count its first epoch chose
    monkeypatch.setattr(trainer, "clock", time.monotonic)
    result = train_fold(tiny_config(epochs=3, train_minutes=1000), tiny_data, 0, tmp_path / "run", resume=True)
    assert result["epochs"] == 2 and result["epochs_completed"] == 2
    log = _log_text(tmp_path / "run")
    assert "train_minutes: keeping the 2 epochs chosen in the first epoch" in log
    assert log.count("epochs fit; the poly LR schedule runs over") == 1
    straight_weights = _network_weights(straight_run[1] / "fold_0" / LATEST)
    resumed_weights = _network_weights(tmp_path / "run" / "fold_0" / LATEST)
    for name, value in straight_weights.items():
        np.testing.assert_allclose(resumed_weights[name], value, rtol=1e-5, atol=1e-6, err_msg=name)


def test_steady_seconds_leave_the_compiling_first_batch_out():
    assert trainer.steady_seconds([40.0, 2.0, 4.0]) == pytest.approx(3.0)
    assert trainer.steady_seconds([7.0]) == 7.0
    assert trainer.steady_seconds([]) == 0.0


def test_planned_epochs_on_start_and_on_resume():
    lines = []
    recorded = epochs_within_budget(9, 5.0, cap=120, spent_seconds=30.0, finished_epochs=1)  # 103 epochs
    assert trainer._planned_epochs(tiny_config(epochs=120, train_minutes=9), RunState(), lines.append) == (120, True)
    assert trainer._planned_epochs(tiny_config(epochs=120), RunState(), lines.append) == (120, False)
    assert lines == []
    # resumed: the recorded count, whatever the budget says now; --epochs below it still caps it
    resumed = RunState(epoch=5, budget=recorded)
    assert trainer._planned_epochs(tiny_config(epochs=120, train_minutes=2), resumed, lines.append) == (103, False)
    assert "keeping the 103 epochs" in lines[-1]
    assert trainer._planned_epochs(tiny_config(epochs=50, train_minutes=9), resumed, lines.append) == (50, False)
    assert lines[-1].startswith("note: epochs 50 caps the 103 epochs train_minutes 9 chose")
    # a run that started without a budget cannot choose one later: its epoch 1 already used the full schedule
    assert trainer._planned_epochs(tiny_config(epochs=120, train_minutes=9), RunState(epoch=5),
                                   lines.append) == (120, False)
    assert lines[-1].startswith("note: train_minutes 9 ignored")

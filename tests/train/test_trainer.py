import json
import os
import subprocess
import sys

import numpy as np
import pytest
import mindspore as ms

from src.errors import UserError
from src.train.checkpoint import read_training_checkpoint
from src.train.run_state import RunState, epoch_line
from src.train.device import setup_device
from src.train.schedule import poly_lr
from src.train.trainer import BEST, LATEST, LOG, PROGRESS, TRANSFER_REPORT, train_fold
from tests.data.preprocessed_fixture import make_preprocessed_folder
from tests.train.tiny_training import ROOT, TINY_STRIDES, tiny_config

# MindSpore fixes the device when the first kernel runs; pytest imports every test module before running
# any test, so choosing it here keeps train_fold's own setup_device call valid in a whole-suite run.
setup_device("CPU", mode="pynative")


@pytest.fixture(autouse=True, scope="module")
def restore_execution_mode():
    # train_fold switches to graph mode; later test modules expect the default
    previous = ms.get_context("mode")
    yield
    ms.set_context(mode=previous)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pre")
    make_preprocessed_folder(folder, patch_size=(16, 16, 16), strides=TINY_STRIDES)
    return folder


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


@pytest.mark.slow
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

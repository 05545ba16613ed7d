"""Seed 2's two stages: DoDNet pretraining on partially labelled MOTS tasks, then transfer to the ResUNetASPP."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import mindspore as ms
from mindspore import Tensor, nn

from src.config import load_config
from src.data.plan import Plan
from src.data.planning import plan_for_config
from src.losses import DeepSupervisionLoss, DoDNetLoss
from src.models import build_network
from src.models.dodnet import DoDNet
from src.models.res_unet_aspp import ResUNetASPP
from src.runtime.device import setup_device
from src.train.train_cell import NetworkWithLoss, build_train_cell
from src.runtime.checkpoint import read_training_checkpoint
from src.train.trainer import BEST, TRANSFER_REPORT, load_pretrained, train_fold
from src.train.validation import PartialLabelValidationStep, build_validation_step, run_validation
from src.variants import network_variant
from tests.data.preprocessed_fixture import make_preprocessed_folder
from tests.data.test_partial_labels import _mots_preprocessed

setup_device("CPU", mode="pynative")

ROOT = Path(__file__).resolve().parents[2]
DYNAMIC_HEAD = ["controller.bias", "controller.weight", "head_features.bias", "head_features.weight"]


class FixedLogits(nn.Cell):
    """A stand-in network: returns the given logits, shifted by the task id so a dropped task shows."""

    def __init__(self, logits):
        super().__init__()
        self.logits = Tensor(logits)

    def construct(self, data, task_id):
        return self.logits + 0.0 * data.sum() + task_id.astype(ms.float32).reshape(-1, 1, 1, 1, 1) * 0.0


def test_validation_counts_sigmoid_positives_on_annotated_voxels_only():
    # one sample, two channels, four voxels; logits > 0 <=> sigmoid > 0.5
    logits = np.array([[2.0, -1.0, 3.0, 0.5], [-2.0, 4.0, -3.0, 1.0]], np.float32).reshape(1, 2, 1, 1, 4)
    target = np.array([[1, 1, -1, 0], [-1, -1, -1, -1]], np.int32).reshape(1, 2, 1, 1, 4)
    step = PartialLabelValidationStep(FixedLogits(logits), DeepSupervisionLoss(DoDNetLoss(), [1.0]), 2)
    batch = (Tensor(np.zeros((1, 1, 1, 1, 4), np.float32)), Tensor(np.array([4], np.int32)), Tensor(target))
    _, tp, fp, fn = step(*batch)
    np.testing.assert_array_equal(tp.asnumpy(), [1, 0])  # voxel 2 is ignored although predicted
    np.testing.assert_array_equal(fp.asnumpy(), [1, 0])  # voxel 3: logit 0.5 -> predicted, label 0
    np.testing.assert_array_equal(fn.asnumpy(), [1, 0])  # voxel 1: label 1, logit -1
    result = run_validation(step, [batch], step.num_counts)
    # organ: Dice 2/(2+1+1) = 0.5; tumour: never annotated -> NaN, left out of the mean
    assert result["dice"][0] == pytest.approx(0.5) and np.isnan(result["dice"][1])
    assert result["pseudo_dice"] == pytest.approx(0.5)


def test_validation_step_follows_the_network():
    net = DoDNet(1, [4, 8], [[3, 3, 3]] * 2, [[1, 1, 1], [2, 2, 2]])
    loss = DeepSupervisionLoss(DoDNetLoss(), [1.0])
    assert isinstance(build_validation_step(network_variant("dodnet"), net, loss, net), PartialLabelValidationStep)
    res_unet = ResUNetASPP(1, 4, [4, 8], [[3, 3, 3]] * 2, [[1, 1, 1], [2, 2, 2]])
    plain = build_validation_step(network_variant("res_unet_aspp"), res_unet, loss, res_unet)
    assert plain.num_counts == 4 and plain.first_foreground == 1


def test_task_conditioned_step_feeds_each_samples_task_to_dodnet():
    net = DoDNet(1, [4, 8], [[3, 3, 3]] * 2, [[1, 1, 1], [2, 2, 2]])
    loss_fn = DeepSupervisionLoss(DoDNetLoss(), [1.0])
    rng = np.random.default_rng(0)
    data = Tensor(rng.normal(size=(2, 1, 8, 8, 8)).astype(np.float32))
    target = Tensor(rng.integers(-1, 2, size=(2, 2, 8, 8, 8)).astype(np.int32))
    with_loss = NetworkWithLoss(net, loss_fn, task_conditioned=True)
    first = float(with_loss(data, Tensor(np.array([0, 1], np.int32)), target).asnumpy())
    other = float(with_loss(data, Tensor(np.array([5, 6], np.int32)), target).asnumpy())
    assert np.isfinite(first) and abs(first - other) > 1e-7
    expected = float(loss_fn(net(data, Tensor(np.array([0, 1], np.int32))), (target,)).asnumpy())
    assert first == pytest.approx(expected, rel=1e-6)

    optimizer = nn.SGD(net.trainable_params(), learning_rate=0.1, momentum=0.9)
    cell = build_train_cell(net, loss_fn, optimizer, 12.0, "O0", task_conditioned=True)
    before = net.controller.weight.asnumpy().copy()
    step_loss = float(cell(data, Tensor(np.array([0, 1], np.int32)), target).asnumpy())
    assert step_loss == pytest.approx(first, rel=1e-5)
    assert np.abs(net.controller.weight.asnumpy() - before).max() > 0  # the dynamic head is trained


def tiny_config(path, **overrides):
    values = {"device_target": "CPU", "epochs": 1, "iters_per_epoch": 1, "val_iters": 1, "batch_size": 2,
              "num_workers": 0, "base_features": 4, "max_features": 16, "amp_level": "O0", "seed": 3,
              "target_spacing": None, "patch_size": None, "augment": False}
    values.update(overrides)
    return load_config(ROOT / "config" / path, values)


@pytest.fixture(scope="module")
def dodnet_run(tmp_path_factory):
    """One tiny DoDNet pretraining epoch on a two-task MOTS folder (kidney, colon)."""
    root = tmp_path_factory.mktemp("dodnet")
    mots = root / "pre_mots"
    _mots_preprocessed(mots)
    summary = train_fold(tiny_config("mots_dodnet.yaml"), mots, "all", root / "dodnet")
    return summary, root / "dodnet" / "fold_all"


def test_dodnet_pretraining_trains_and_scores_both_channels(dodnet_run):
    summary, fold_dir = dodnet_run
    assert summary["epochs_completed"] == 1 and (fold_dir / BEST).is_file()
    assert np.isfinite(summary["history"]["train_loss"][0]) and np.isfinite(summary["history"]["val_loss"][0])
    epoch_line = next(line for line in (fold_dir / "training_log.txt").read_text().splitlines() if "epoch 1/1" in line)
    # one pseudo-Dice per sigmoid channel (organ, tumour), not per softmax class of the plan
    dice = epoch_line.split("pseudo_dice [")[1].split("]")[0].split(", ")
    assert len(dice) == 2


def test_transfer_loads_the_pretrained_backbone_and_skips_the_dynamic_head(dodnet_run, tmp_path):
    _, fold_dir = dodnet_run
    kits = tmp_path / "pre_kits"
    make_preprocessed_folder(kits)
    cfg = tiny_config("kits21_transfer.yaml")
    network = build_network(cfg, plan_for_config(Plan.read(kits / "plans.json"), None, None,
                                                 cfg.base_features, cfg.max_features, cfg.max_stages))
    report = load_pretrained(network, fold_dir / BEST, tmp_path, write=True)
    assert json.loads((tmp_path / TRANSFER_REPORT).read_text()) == report
    backbone = sorted(p.name for p in network.get_parameters() if p.name.startswith("backbone."))
    assert report["loaded"] == backbone and len(backbone) > 50
    assert report["skipped"] == DYNAMIC_HEAD  # optimizer moments are neither loaded nor listed
    weights, _ = read_training_checkpoint(fold_dir / BEST)
    by_name = {p.name: p.asnumpy() for p in network.get_parameters()}
    for name in ("backbone.encoder.0.units.0.conv.weight", "backbone.aspp.project.conv.weight"):
        np.testing.assert_array_equal(by_name[name], weights[name].asnumpy())


def _run(*argv, cwd):
    result = subprocess.run([sys.executable, *argv], cwd=cwd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result


@pytest.mark.slow
def test_readme_transfer_commands_end_to_end(tmp_path):
    """The README's seed-2 commands on synthetic data, with tiny sizes (about 2 minutes on 2 cores)."""
    small = ["--patch_size", "32", "64", "64", "--epochs", "1", "--iters_per_epoch", "2", "--val_iters", "1",
             "--base_features", "8", "--max_features", "32", "--num_workers", "1", "--num_folds", "2"]
    _run(str(ROOT / "prepare.py"), "synth", "--format", "mots", "--cases", "7", "--out", "synth_mots", cwd=tmp_path)
    _run(str(ROOT / "prepare.py"), "synth", "--format", "kits21", "--cases", "4", "--out", "synth_kits21",
         cwd=tmp_path)
    _run(str(ROOT / "prepare.py"), "preprocess", "--raw", "synth_mots", "--out", "pre_mots", "--config",
         str(ROOT / "config" / "mots_dodnet.yaml"), *small, cwd=tmp_path)
    _run(str(ROOT / "prepare.py"), "preprocess", "--raw", "synth_kits21", "--out", "pre_kits21", "--config",
         str(ROOT / "config" / "kits21_transfer.yaml"), *small, cwd=tmp_path)
    plan = json.loads((tmp_path / "pre_mots" / "plans.json").read_text())
    assert plan["task_channels"]["4"] == {"organ": None, "tumor": [1]}

    _run(str(ROOT / "train.py"), "--config", str(ROOT / "config" / "mots_dodnet.yaml"), "--data", "pre_mots",
         "--fold", "all", "--output", "runs/dodnet", *small, cwd=tmp_path)
    log = (tmp_path / "runs" / "dodnet" / "fold_all" / "training_log.txt").read_text()
    assert "network dodnet" in log and "pseudo_dice [" in log
    _run(str(ROOT / "train.py"), "--config", str(ROOT / "config" / "kits21_transfer.yaml"), "--data", "pre_kits21",
         "--fold", "0", "--output", "runs/transfer", "--pretrained", "runs/dodnet/fold_all/checkpoint_best.ckpt",
         *small, cwd=tmp_path)
    report = json.loads((tmp_path / "runs" / "transfer" / "fold_0" / TRANSFER_REPORT).read_text())
    assert len(report["loaded"]) > 100 and all(name.startswith("backbone.") for name in report["loaded"])
    assert report["skipped"] == DYNAMIC_HEAD

    # DoDNet is a pretraining network: evaluation and export refuse it in one clear line
    for script, extra in (("eval.py", ["--data", "pre_mots", "--fold", "0", "--output", "ev"]),
                          ("export.py", ["--file_name", "dodnet"])):
        result = subprocess.run([sys.executable, str(ROOT / script), "--config",
                                 str(ROOT / "config" / "mots_dodnet.yaml"),
                                 "--ckpt", "runs/dodnet/fold_all/checkpoint_best.ckpt", *extra],
                                cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert result.returncode == 2 and "error: DoDNet is the pretraining model" in result.stderr, result.stderr

"""The full-size rehearsal benchmark: its helpers (arguments, commands, real-size rewrite, per-step memory),
its failure report, and (slow) the whole chain at reduced size."""
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from benchmarks import rehearsal

ROOT = Path(__file__).resolve().parents[2]


def test_arguments_defaults_and_config_overrides():
    args, overrides = rehearsal.parse_args(["--config", "kits19_bdci", "--patch_size", "16", "32", "32"])
    assert Path(args.config) == ROOT / "config" / "kits19_bdci.yaml"
    assert (args.slices, args.train_slices, args.rows, args.train_cases) == ([100], 100, 512, 2)
    assert args.steps is None and args.tta_mirror is None
    assert overrides == ["--patch_size", "16", "32", "32"]
    args, _ = rehearsal.parse_args(["--slices", "100", "300", "1000", "--steps", "predict"])
    assert args.slices == [100, 300, 1000] and args.steps == ["predict"]
    with pytest.raises(SystemExit):
        rehearsal.parse_args(["--config", "no_such_config"])
    with pytest.raises(SystemExit):
        rehearsal.parse_args(["stray"])


def test_default_steps_leave_out_what_dodnet_refuses():
    assert rehearsal.default_steps("dodnet") == ["preprocess", "train"]
    assert rehearsal.default_steps("plain_unet") == ["preprocess", "train", "export", "predict"]


def test_every_step_runs_on_cpu_with_the_overrides(tmp_path):
    args, overrides = rehearsal.parse_args(["--config", "kits21_nnunet", "--fold", "all", "--patch_size", "8", "8", "8"])
    commands = rehearsal.step_commands(args, overrides, tmp_path)
    assert set(commands) == set(rehearsal.STEPS)
    for name, command in commands.items():
        text = " ".join(map(str, command))
        assert "--device_target CPU" in text and "--patch_size 8 8 8" in text, name
        assert str(ROOT / "config" / "kits21_nnunet.yaml") in text, name
    train = " ".join(map(str, commands["train"]))
    assert "--epochs 1 --iters_per_epoch 2 --val_iters 1" in train and "--fold all" in train
    assert "fold_all/checkpoint_best.ckpt" in " ".join(map(str, commands["predict"]))
    assert "--tta_mirror" not in commands["predict"]
    args, _ = rehearsal.parse_args(["--tta_mirror", "false"])
    assert rehearsal.step_commands(args, [], tmp_path)["predict"][-2:] == ["--tta_mirror", "false"]
    args, _ = rehearsal.parse_args(["--untrained"])
    for name in ("export", "predict"):
        assert tmp_path / "untrained" / "checkpoint_best.ckpt" in rehearsal.step_commands(args, [], tmp_path)[name]


def test_rescaled_affine_keeps_the_volume_edges():
    affine = np.array([[0, 0, -0.7, 5], [0, -0.9, 0, 2], [-3.0, 0, 0, 1], [0, 0, 0, 1]], dtype=float)
    old, new = (10, 20, 30), (40, 50, 90)
    out = rehearsal.rescaled_affine(affine, old, new)
    for corner_old, corner_new in (([-0.5] * 3, [-0.5] * 3), ([n - 0.5 for n in old], [n - 0.5 for n in new])):
        np.testing.assert_allclose(out @ [*corner_new, 1], affine @ [*corner_old, 1], atol=1e-9)
    doubled = rehearsal.rescaled_affine(affine, old, new, magnify=2.0)
    np.testing.assert_allclose(doubled[:3], 2 * out[:3], atol=1e-9)


def test_resize_case_writes_real_size_files_the_readers_accept(tmp_path):
    from src.data.io import load_image, load_label

    affine = np.array([[0, 0, -2.0, 0], [0, -2.0, 0, 0], [-4.0, 0, 0, 0], [0, 0, 0, 1]], dtype=float)
    image = np.full((6, 10, 10), -1000, dtype=np.int16)
    label = np.zeros((6, 10, 10), dtype=np.uint8)
    image[2:4, 3:7, 3:7], label[2:4, 3:7, 3:7], label[3, 4:6, 4:6] = 150, 1, 2
    paths = tmp_path / "imaging.nii.gz", tmp_path / "segmentation.nii.gz"
    for path, array in zip(paths, (image, label)):
        nib.save(nib.Nifti1Image(array, affine), str(path))
    rehearsal.resize_case(*paths, (12, 40, 40))
    data, meta = load_image(paths[0])
    seg = load_label(paths[1], like=meta)
    assert data.shape == seg.shape == (12, 40, 40)
    # 20 mm field of view magnified to 400 mm on 40 pixels; slices 24 mm * 20 / 12
    np.testing.assert_allclose(meta.spacing, (40.0, 10.0, 10.0), rtol=1e-5)
    assert set(np.unique(seg)) == {0, 1, 2} and data.min() == -1000 and data.max() == 150
    assert not list(tmp_path.glob("*.partial*"))


def test_a_failing_step_is_reported_in_the_json_and_the_exit_status(tmp_path):
    # predict without a trained checkpoint: predict.py refuses with one line; the sweep entry says so
    done = subprocess.run([sys.executable, "-m", "benchmarks.rehearsal", "--config", "kits19_bdci", "--steps",
                           "predict", "--slices", "6", "--rows", "32", "--keep", str(tmp_path), "--json"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["steps"] == {} and not result["ok"]
    entry = result["predict"]["6"]
    assert not entry["ok"] and entry["returncode"] != 0 and "checkpoint_best.ckpt" in entry["error"]
    assert entry["shape"] == [6, 32, 32] and entry["spacing_mm"] == [3.0, 12.5, 12.5] and "predict.py" in entry["command"]
    assert result["machine"]["cpus"] >= 1 and isinstance(result["machine"]["avx2"], bool)


@pytest.mark.slow
def test_whole_rehearsal_at_reduced_size(tmp_path):
    """The BDCI config's network, batch, loss, augmentation and workers on 64 x 64 slices; the patch and
    target spacing are overridden so the tiny images hold a few windows (the real size is the benchmark's)."""
    done = subprocess.run([sys.executable, "-m", "benchmarks.rehearsal", "--config", "kits19_bdci", "--rows", "64",
                           "--train_slices", "20", "--slices", "20", "30", "--keep", str(tmp_path), "--json",
                           "--patch_size", "16", "32", "32", "--target_spacing", "6", "8", "8"],
                          cwd=ROOT, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["ok"] and result["config"] == "kits19_bdci" and result["dataset"] == "kits19"
    assert list(result["steps"]) == ["preprocess", "train", "export"]
    for name, step in [*result["steps"].items(), *result["predict"].items()]:
        assert step["ok"] and step["seconds"] > 0 and step["peak_rss_gb"] > 0 and step["peak_tree_gb"] > 0, name
    assert result["plan"]["patch_size"] == [16, 32, 32]
    assert "finished 1/1 epochs" in result["steps"]["train"]["last_line"]
    assert (tmp_path / "runs" / "fold_0" / "checkpoint_best.ckpt").is_file()
    assert (tmp_path / "export" / "model.mindir").is_file()
    assert set(result["predict"]) == {"20", "30"}
    for slices in (20, 30):
        entry = result["predict"][str(slices)]
        assert entry["shape"] == [slices, 64, 64] and entry["windows"] >= 1
        labels = nib.load(str(tmp_path / f"predict_{slices}" / "out" / "case_00000.nii.gz"))
        assert labels.shape == (slices, 64, 64)

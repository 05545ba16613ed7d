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


def _python(code: str) -> list:
    return [sys.executable, "-c", code]


def test_peak_memory_is_per_step_and_counts_workers(tmp_path):
    big = "b = b'x' * 300_000_000; import time; time.sleep(0.6)"
    first = rehearsal.run_step(_python(big), tmp_path / "big", max_gb=8)
    ballast = b"x" * 700_000_000  # Linux hands a parent's peak to its children: it must not be reported as theirs
    second = rehearsal.run_step(_python("print('small')"), tmp_path / "small", max_gb=8)
    del ballast
    assert first["ok"] and first["peak_rss_gb"] >= 0.3 and first["peak_tree_gb"] >= 0.25
    assert second["ok"] and second["peak_rss_gb"] < 0.15, second  # not the earlier step's peak
    assert second["last_line"] == "small"
    # memory held by a worker process (a child of the step's process) for longer than the workers'
    # sampling interval (3 s) is in the tree's figure
    held = big.replace("sleep(0.6)", "sleep(3.5)")
    worker = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {held!r}])"
    tree = rehearsal.run_step(_python(worker), tmp_path / "worker", max_gb=8)
    assert tree["ok"] and tree["peak_tree_gb"] >= 0.25


def test_pages_a_worker_shares_with_the_step_count_once(tmp_path):
    # a forked worker shares the step's 300 MB copy-on-write: the tree holds 0.3 GB, not 0.45 or 0.6
    fork = ("import os, time; b = b'x' * 300_000_000; pid = os.fork()\n"
            "if pid == 0: time.sleep(3.5); os._exit(0)\n"
            "os.waitpid(pid, 0)")
    result = rehearsal.run_step(_python(fork), tmp_path / "fork", max_gb=8)
    assert result["ok"] and 0.28 <= result["peak_tree_gb"] < 0.4, result


def test_a_step_is_stopped_when_the_machine_runs_short_of_memory(tmp_path):
    result = rehearsal.run_step(_python("import time; time.sleep(60)"), tmp_path / "short", max_gb=8,
                                min_free_gb=1e6)
    assert not result["ok"] and "available memory" in result["error"] and result["returncode"] < 0


def test_a_step_over_its_time_limit_is_stopped_with_its_progress_so_far(tmp_path):
    bar = ("import sys, time\n"
           "for i in range(3): sys.stderr.write(f'\\rwindows:  {i}%|#  | {i}/294 [00:0{i}<01:00]'); sys.stderr.flush()\n"
           "time.sleep(60)")
    result = rehearsal.run_step(_python(bar), tmp_path / "slow", max_gb=8, max_minutes=0.03)
    assert not result["ok"] and "--max_step_minutes 0.03" in result["error"] and result["returncode"] < 0
    assert result["progress"] == "2/294" and result["seconds"] < 20


def test_last_progress_reads_the_last_bar_count():
    assert rehearsal.last_progress(["cases:   0%|   | 0/1 [00:00<?, ?case/s]", "windows: 40%|####  | 118/294 [01:02<...]",
                                    "a plain line"]) == "118/294"
    assert rehearsal.last_progress(["no bar here"]) == ""


def test_a_step_over_the_memory_cap_is_stopped_with_its_workers(tmp_path):
    hog = ("import subprocess, sys, time; w = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
           "print(w.pid, flush=True); b = b'x' * 400_000_000; time.sleep(60)")
    result = rehearsal.run_step(_python(hog), tmp_path / "hog", max_gb=0.2)
    assert not result["ok"] and result["error"].startswith("stopped") and result["returncode"] < 0
    worker = int((tmp_path / "hog" / "stdout.txt").read_text().split()[0])
    subprocess.run(["sleep", "0.5"])
    assert not Path(f"/proc/{worker}").exists() or "Z" in Path(f"/proc/{worker}/stat").read_text().split()[2]


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

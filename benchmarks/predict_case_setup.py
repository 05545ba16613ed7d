"""Untimed set-up and the nnU-Net side of ``benchmarks.predict_case``: a trained locator for the random
full-resolution network, the benchmark venv, nnU-Net's model folder, and its timed whole-process run."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.preprocess_case import nnunet_plans, write_kits_case

ROOT = Path(__file__).resolve().parents[1]
BENCH_VENV = ROOT / ".venv-bench"
REFERENCE_SCRIPT = ROOT / "benchmarks" / "predict_case_nnunet.py"


# ---------------------------------------------------------------- the locator

def preprocessed_phantoms(plan, folder: Path, shape, count: int) -> list:
    """``count`` synthetic phantoms (other slice counts, rows and noise than the timed case), preprocessed
    with the case's plan as predict.py preprocesses: (data (C, ...), labels on the same grid) pairs."""
    from src.data.io import load_image, load_label
    from src.data.preprocess import preprocess_image_for_inference

    rng = np.random.default_rng(1)
    phantoms = []
    for i in range(count):
        size = (int(shape[0] * rng.uniform(0.6, 1.4)), int(shape[1] * rng.uniform(0.5, 0.8)))
        spacing = (float(rng.uniform(2.0, 4.0)), 0.78125 * 512 / size[1], 0.78125 * 512 / size[1])
        case = write_kits_case(folder / f"train_{i}", (size[0], size[1], size[1]), spacing, seed=100 + i)
        image, meta = load_image(case.image)
        data, _ = preprocess_image_for_inference(image, meta, plan)
        label = load_label(case.label, like=meta)
        # nearest-neighbour labels on the preprocessed grid: the locator only needs the coarse blocks
        index = np.ix_(*[np.minimum((np.arange(n) * s / n).astype(int), s - 1)
                         for n, s in zip(data.shape[1:], label.shape)])
        phantoms.append((data, label[index]))
    return phantoms


def add_trained_locator(cfg, plan: dict, ckpt: Path, folder: Path, shape, iters: int, cases: int) -> dict:
    """Train the locator on ``cases`` synthetic phantoms, check it on one more (as train.py checks it on
    the fold's validation cases) and store both in ``ckpt`` (untimed); returns what was done."""
    from src.infer.locate_check import check_summary
    from src.runtime.device import setup_device
    from src.train.locator_training import attach_locator, check_network, coarse_pair, locator_plan, train_locator_on

    setup_device("CPU", mode="graph")
    cfg = cfg.replace(locator_iters=iters)
    lplan = locator_plan(cfg, plan)
    started = time.perf_counter()
    phantoms = preprocessed_phantoms(plan, folder, shape, cases + 1)
    factors = lplan["factors"]
    volumes = [coarse_pair(data, label, factors) for data, label in phantoms[:-1]]
    network, stats = train_locator_on(cfg, lplan, volumes, log=lambda line: print(line, file=sys.stderr))
    check = check_network(cfg, plan, network, lplan, [("held-out phantom", *phantoms[-1])])
    attach_locator(ckpt, network, lplan, check)
    return {"iters": iters, "training_cases": cases, "factors": factors, "patch_size": lplan["patch_size"],
            "setup_seconds": round(time.perf_counter() - started, 1), "last_loss": round(stats["last_loss"], 4),
            "check": check_summary(check)}


# ---------------------------------------------------------------- nnU-Net v2

def reference_python(requested) -> str:
    """The benchmark venv's Python; creates .venv-bench from requirements-bench.txt when none is given or found."""
    if requested:
        return requested
    python = BENCH_VENV / "bin" / "python"
    if not python.is_file():
        print(f"creating the benchmark venv {BENCH_VENV} (requirements-bench.txt) ...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(BENCH_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "-r", str(ROOT / "requirements-bench.txt")],
                       check=True)
    return str(python)


def nnunet_model_folder(plan: dict, intensity: dict, case, folder: Path) -> Path:
    """MODEL/plans.json + dataset.json: our plan in nnU-Net v2's format and axis order, PlainConvUNet."""
    import nibabel as nib

    zooms = nib.load(str(case.image)).header.get_zooms()[:3]
    plans, dataset = nnunet_plans(plan.get("target_spacing"), intensity, list(zooms)[::-1])
    # nnU-Net's axes: SimpleITK's (reversed NIfTI order) permuted by transpose_forward; ours are NIfTI's
    ours_of = [2 - a for a in plans["transpose_forward"]]

    def reorder(values):
        return [values[a] for a in ours_of]

    configuration = plans["configurations"]["3d_fullres"]
    stages = len(plan.get("features"))
    configuration.update({
        "patch_size": reorder(plan.get("patch_size")), "spacing": reorder(plan.get("target_spacing")),
        "architecture": {
            "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
            "arch_kwargs": {
                "n_stages": stages, "features_per_stage": [int(f) for f in plan.get("features")],
                "conv_op": "torch.nn.modules.conv.Conv3d",
                "kernel_sizes": [reorder(k) for k in plan.get("conv_kernel_sizes")],
                "strides": [reorder(s) for s in plan.get("strides")],
                "n_conv_per_stage": [2] * stages, "n_conv_per_stage_decoder": [2] * (stages - 1),
                "conv_bias": True, "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
                "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
                "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}},
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]},
    })
    plans["original_median_spacing_after_transp"] = reorder(plan.get("target_spacing"))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "plans.json").write_text(json.dumps(plans, indent=1))
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=1))
    return folder


def run_reference(args, cfg, plan: dict, case, work: Path, ours_peak_kb: int) -> dict:
    """nnU-Net's predictor on ``case`` as a whole process (timed), after an untimed checkpoint set-up."""
    from benchmarks.preprocess_case import foreground_intensity
    from src.runtime.device import cpu_thread_count

    python = reference_python(args.reference_python)
    model = nnunet_model_folder(plan, foreground_intensity(case), case, work / "nnunet_model")
    setup = subprocess.run([python, str(REFERENCE_SCRIPT), "--model", str(model), "--make_checkpoint"],
                           capture_output=True, text=True)
    if setup.returncode != 0:
        raise SystemExit(f"nnU-Net set-up failed:\n{setup.stderr[-3000:]}")
    command = [python, str(REFERENCE_SCRIPT), "--model", str(model), "--input", str(case.image), "--output",
               str(work / "nnunet_out"), "--threads", str(cpu_thread_count())]
    if args.tta_mirror == "true":
        command.append("--mirror")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ONEDNN_", "KITSEG_"))}
    log_dir = work / "nnunet_log"
    log_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(log_dir / "stdout.txt", "w") as out, open(log_dir / "stderr.txt", "w") as err:
        child = subprocess.Popen(command, stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(child.pid, 0)  # this child's own peak, not the largest of all children
    seconds = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    stdout = (log_dir / "stdout.txt").read_text()
    if child.returncode != 0:
        raise SystemExit(f"nnU-Net prediction failed:\n{(log_dir / 'stderr.txt').read_text()[-3000:]}")
    inner = json.loads(stdout.strip().splitlines()[-1])
    stages = dict(inner["stages"])
    stages_total = sum(stages.values())
    agreement = label_agreement(work / "out" / f"{case.case_id}.nii.gz", work / "nnunet_out" / "case.nii.gz")
    return {"seconds": round(seconds, 1), "peak_rss_gb": round(setup_peak(usage), 3), "stages": stages,
            "stages_other": round(seconds - stages_total, 3), "torch": inner["torch"], "threads": inner["threads"],
            "predictor": "nnunetv2 2.8.1 nnUNetPredictor.predict_from_files_sequential, PlainConvUNet",
            "labels_equal_fraction_vs_ours": agreement}


def setup_peak(usage) -> float:
    return usage.ru_maxrss * 1024 / 1e9


def label_agreement(ours: Path, theirs: Path):
    """Fraction of voxels with the same label (random weights: a sanity check of geometry, not of quality)."""
    import nibabel as nib

    if not ours.is_file() or not theirs.is_file():
        return None
    a, b = np.asarray(nib.load(str(ours)).dataobj), np.asarray(nib.load(str(theirs)).dataobj)
    return None if a.shape != b.shape else round(float((a == b).mean()), 4)

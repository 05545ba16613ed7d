"""Peak memory and wall time of ``predict.py`` on one KiTS-sized case on CPU.

    python -m benchmarks.predict_case [--config config/kits19_bdci.yaml] [--slices 100] [--json]
                                      [--tta_mirror false] [--sw_batch_size 2] [--keep DIR]

A synthetic CT case of slices x 512 x 512 voxels at 3 x 0.78 x 0.78 mm (KiTS19 layout and affine,
``benchmarks.preprocess_case``'s phantom) is written to a temporary folder, the config's network is
planned for it (``plan_experiment`` with the config's target spacing and patch size) and saved with
random weights as a training checkpoint. Then ``predict.py`` runs as a child process on CPU and its
peak resident memory is read with ``getrusage(RUSAGE_CHILDREN).ru_maxrss`` after it exits (it is stopped
early if it passes ``--max_rss_gb``, default 12, so a runaway run cannot exhaust a shared machine). Random
weights make the label map noisy, which is the harder case for postprocessing and the report.
The last line printed is one JSON object.

Per stage: predict.py runs with ``KITSEG_STAGE_TIMES=1`` and the case's stage seconds
(``src/infer/stage_times.py``: read, resample in, locate, windows, softmax, back to original + argmax,
postprocess, write labels, report + overlay + page, and the model load) go into ``stages``; ``stages_other`` is
the rest of the process (interpreter start, imports, output checks).

Locate, then segment (``--locate windows|crop``, or ``auto`` when the model carries a locator that passed its
held-out check): the random full-resolution network is kept, but the first pass must be a trained one, so the
untimed set-up trains the locator (``--locator_iters`` steps, ``src/train/locator_training.py``) on
``--locator_cases`` synthetic phantoms of other sizes and noise, preprocessed with the case's plan, checks it
on one more such phantom (``src/infer/locate_check.py``) and stores both in the checkpoint.

``--reference`` runs nnU-Net v2's own ``nnUNetPredictor`` (``benchmarks/predict_case_nnunet.py``) on the same
case as a whole process right after ours: the same plan (spacing, intensity, patch, window step 0.5, Gaussian,
mirroring per ``--tta_mirror``) and the same network topology (PlainConvUNet, strided-convolution downsampling:
the BDCI config's max pooling costs the same convolutions), random weights, 2 threads. It runs in the benchmark
venv ``--reference_python`` (default ``.venv-bench/bin/python``, created from requirements-bench.txt when
missing). Reported: its seconds, peak memory, its stages, and ``ratio`` = ours / nnU-Net's.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import src  # noqa: F401  (CPU fast-path environment before anything imports mindspore)
from benchmarks.preprocess_case import KITS19_LABELS, foreground_intensity, machine_description, write_kits_case
from src import cpu_precision
from src.infer import stage_times
from src.config import load_config
from src.data.plan import Plan
from src.data.planning import plan_experiment
from src.infer.sliding_window import window_layout

ROOT = Path(__file__).resolve().parents[1]
SPACING = (3.0, 0.78125, 0.78125)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "config" / "kits19_bdci.yaml"))
    parser.add_argument("--slices", type=int, default=100)
    parser.add_argument("--rows", type=int, default=512, help="rows and columns per slice")
    parser.add_argument("--tta_mirror", default="false", choices=("true", "false"),
                        help="mirroring multiplies the time by 8 and barely changes the memory (default off)")
    parser.add_argument("--sw_batch_size", type=int, default=None, help="windows per network call (default: config)")
    parser.add_argument("--max_rss_gb", type=float, default=12.0,
                        help="stop predict.py when its resident memory passes this (protects a shared machine)")
    parser.add_argument("--keep", default=None, help="work in this folder and keep it (default: a temporary one)")
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    parser.add_argument("--locate", default=None, choices=("off", "auto", "windows", "crop"),
                        help="locate, then segment (default: the config's)")
    parser.add_argument("--locator_iters", type=int, default=300, help="locator training steps in the set-up")
    parser.add_argument("--locator_cases", type=int, default=4, help="synthetic training cases for the locator")
    parser.add_argument("--reference", action="store_true", help="also run nnU-Net v2's nnUNetPredictor")
    parser.add_argument("--reference_python", default=os.environ.get("KITSEG_REFERENCE_PYTHON"),
                        help="Python of the benchmark venv (default .venv-bench/bin/python, created when missing)")
    return parser


def write_random_checkpoint(cfg, plan: Plan, path: Path) -> None:
    import mindspore as ms

    from src.models import build_network
    from src.runtime.checkpoint import save_training_checkpoint

    ms.set_seed(0)
    network = build_network(cfg, plan)
    save_training_checkpoint(path, network, {"config": cfg.to_dict(), "plan": plan.to_json(), "epoch": 0})


def resident_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_with_memory_cap(command, log_dir: Path, max_rss_gb: float):
    """(return code, stopped for memory, stdout, stderr) of ``command``; the child is terminated once
    its resident memory passes ``max_rss_gb`` so a runaway run cannot push a shared machine into OOM."""
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(log_dir / "stdout.txt", "w") as out, open(log_dir / "stderr.txt", "w") as err:
        child = subprocess.Popen(command, stdout=out, stderr=err, text=True)
        stopped = False
        while child.poll() is None:
            if resident_kb(child.pid) * 1024 > max_rss_gb * 1e9:
                child.terminate()
                stopped = True
                child.wait()
                break
            time.sleep(0.5)
    return child.returncode, stopped, (log_dir / "stdout.txt").read_text(), (log_dir / "stderr.txt").read_text()


def run(args, work: Path) -> dict:
    cfg = load_config(args.config, {"device_target": "CPU"})
    shape = (args.slices, args.rows, args.rows)
    case = write_kits_case(work / "raw", shape, SPACING)
    fingerprint = {"spacings": [list(SPACING)], "shapes_after_crop": [list(shape)],
                   "intensity": foreground_intensity(case), "case_ids": [case.case_id]}
    plan = plan_experiment(fingerprint, KITS19_LABELS, target_spacing=cfg.target_spacing, patch_size=cfg.patch_size,
                           patch_budget_voxels=cfg.patch_budget_voxels, base_features=cfg.base_features,
                           max_features=cfg.max_features, max_stages=cfg.max_stages, dataset="kits19",
                           image_budget_voxels=cfg.image_budget_voxels)
    ckpt = work / "model" / "checkpoint_best.ckpt"
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    write_random_checkpoint(cfg, plan, ckpt)
    locate = args.locate or cfg.locate
    locator = None
    if locate != "off" and args.locator_iters > 0:
        from benchmarks.predict_case_setup import add_trained_locator

        locator = add_trained_locator(cfg, plan, ckpt, work / "locator_data", shape, args.locator_iters,
                                      args.locator_cases)
    resampled = [round(s * sp / t) for s, sp, t in zip(shape, SPACING, plan.target_spacing)]
    windows = len(window_layout(resampled, plan.patch_size, cfg.step_size).starts)
    sw_batch = args.sw_batch_size or cfg.sw_batch_size

    command = [sys.executable, str(ROOT / "predict.py"), "--config", args.config, "--ckpt", str(ckpt),
               "--input", str(work / "raw"), "--output", str(work / "out"), "--device_target", "CPU",
               "--tta_mirror", args.tta_mirror, "--sw_batch_size", str(sw_batch), "--locate", locate,
               "--overwrite"]
    os.environ[stage_times.ENV] = "1"  # predict.py prints its stage seconds
    start = time.perf_counter()
    returncode, stopped, stdout, stderr = run_with_memory_cap(command, work / "predict_log", args.max_rss_gb)
    seconds = time.perf_counter() - start
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if stopped:
        stdout += f"\nstopped: resident memory passed {args.max_rss_gb} GB"
    elif returncode != 0:
        raise SystemExit(f"predict.py failed ({returncode}):\n{stderr[-3000:]}")
    report_path = work / "out" / f"{case.case_id}_report.json"
    report = json.loads(report_path.read_text()) if report_path.is_file() else None
    result = {
        "config": Path(args.config).name,
        "shape": list(shape),
        "spacing_mm": list(SPACING),
        "target_spacing": plan.target_spacing,
        "patch_size": plan.patch_size,
        "features": plan.features,
        "windows": windows,
        "sw_batch_size": sw_batch,
        "tta_mirror": args.tta_mirror == "true",
        "completed": not stopped,
        "peak_rss_gib": round(peak_kb / 1024 ** 2, 3),
        "peak_rss_gb": round(peak_kb * 1024 / 1e9, 3),
        "seconds": round(seconds, 1),
        "predicted_kidney_ml": round(report["volumes_ml"]["kidney"]["total"], 1) if report else None,
        "last_stdout_line": stdout.strip().splitlines()[-1] if stdout.strip() else "",
        "locate": locate,
        "locator": locator,
        **stage_split(stderr, seconds),
        "machine": machine_description(),
        "cpu_flags": sorted(cpu_precision.relevant_flags()),
        "inference_precision": cpu_precision.choose_precision(cfg.inference_precision),
    }
    if args.reference:
        from benchmarks.predict_case_setup import run_reference

        result["reference"] = run_reference(args, cfg, plan, case, work, peak_kb)
        result["ratio"] = round(result["seconds"] / result["reference"]["seconds"], 3)
        result["ratio_windows_stage"] = windows_stage_ratio(result["stages"], result["reference"]["stages"])
    return result


def windows_stage_ratio(stages: dict, reference_stages: dict) -> float:
    """Our windows against nnU-Net's sliding window. Our first network call (graph compile + its windows) is
    a stage of its own, nested in "windows", so the exclusive seconds of both count."""
    from src.infer.predictor import FirstCallTimed

    windows = stages.get("windows", float("nan")) + stages.get(FirstCallTimed.STAGE, 0.0)
    return round(windows / reference_stages["network (sliding window)"], 3)


def stage_split(stderr: str, seconds: float) -> dict:
    """The case's stage seconds (exclusive of nested stages), the model load, and what is left."""
    records = stage_times.parse_lines(stderr)
    stages, counts = {}, {}
    for record in records:
        parents = record.get("parents", {})
        for name, value in record["seconds"].items():
            nested = sum(v for n, v in record["seconds"].items() if parents.get(n) == name)
            stages[name] = round(max(stages.get(name, 0.0) + value - nested, 0.0), 3)
        counts.update(record.get("counts", {}))
    return {"stages": stages, "stages_other": round(seconds - sum(stages.values()), 3), "window_counts": counts}


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    if args.keep:
        work = Path(args.keep)
        work.mkdir(parents=True, exist_ok=True)
        result = run(args, work)
    else:
        with tempfile.TemporaryDirectory(prefix="predict_case_") as tmp:
            result = run(args, Path(tmp))
    if not args.json:
        state = "" if result["completed"] else " (stopped at the memory cap)"
        print(f"predict.py on {result['shape']} voxels: peak RSS {result['peak_rss_gb']} GB "
              f"({result['peak_rss_gib']} GiB){state}, {result['seconds']} s, {result['windows']} windows of "
              f"{result['patch_size']}, locate {result['locate']} {result['window_counts']}")
        print("  stages: " + ", ".join(f"{k} {v} s" for k, v in result["stages"].items())
              + f", other {result['stages_other']} s")
        if "reference" in result:
            ref = result["reference"]
            print(f"nnU-Net v2 nnUNetPredictor: {ref['seconds']} s, peak RSS {ref['peak_rss_gb']} GB; "
                  f"ratio ours / nnU-Net {result['ratio']}")
            print("  stages: " + ", ".join(f"{k} {v} s" for k, v in ref["stages"].items()))
    print(json.dumps(result))


if __name__ == "__main__":
    main()

"""Peak memory and wall time of ``predict.py`` on one KiTS-sized case on CPU.

    python -m benchmarks.predict_case [--config config/kits19_bdci.yaml] [--slices 100] [--json]
                                      [--tta_mirror false] [--sw_batch_size 2] [--keep DIR]

A synthetic CT case of slices x 512 x 512 voxels at 3 x 0.78 x 0.78 mm (KiTS19 layout and affine,
``benchmarks.preprocess_case``'s phantom) is written to a temporary folder, the config's network is
planned for it (``plan_experiment`` with the config's target spacing and patch size) and saved with
random weights as a training checkpoint. Then ``predict.py`` runs as a child process on CPU and its
peak resident memory is read with ``getrusage(RUSAGE_CHILDREN).ru_maxrss`` after it exits. Random
weights make the label map noisy, which is the harder case for postprocessing and the report.
The last line printed is one JSON object.
"""
import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import src  # noqa: F401  (CPU fast-path environment before anything imports mindspore)
from benchmarks.preprocess_case import KITS19_LABELS, foreground_intensity, write_kits_case
from src.config import load_config
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
    parser.add_argument("--keep", default=None, help="work in this folder and keep it (default: a temporary one)")
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    return parser


def write_random_checkpoint(cfg, plan: dict, path: Path) -> None:
    import mindspore as ms

    from src.models import build_network
    from src.train.checkpoint import save_training_checkpoint

    ms.set_seed(0)
    network = build_network(cfg, plan)
    save_training_checkpoint(path, network, {"config": cfg.to_dict(), "plan": plan, "epoch": 0})


def run(args, work: Path) -> dict:
    cfg = load_config(args.config, {"device_target": "CPU"})
    shape = (args.slices, args.rows, args.rows)
    case = write_kits_case(work / "raw", shape, SPACING)
    fingerprint = {"spacings": [list(SPACING)], "shapes_after_crop": [list(shape)],
                   "intensity": foreground_intensity(case), "case_ids": [case.case_id]}
    plan = plan_experiment(fingerprint, KITS19_LABELS, target_spacing=cfg.target_spacing, patch_size=cfg.patch_size,
                           patch_budget_voxels=cfg.patch_budget_voxels, base_features=cfg.base_features,
                           max_features=cfg.max_features, max_stages=cfg.max_stages, dataset="kits19")
    ckpt = work / "model" / "checkpoint_best.ckpt"
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    write_random_checkpoint(cfg, plan, ckpt)
    resampled = [round(s * sp / t) for s, sp, t in zip(shape, SPACING, plan["target_spacing"])]
    windows = len(window_layout(resampled, plan["patch_size"], cfg.step_size).starts)
    sw_batch = args.sw_batch_size or cfg.sw_batch_size

    command = [sys.executable, str(ROOT / "predict.py"), "--config", args.config, "--ckpt", str(ckpt),
               "--input", str(work / "raw"), "--output", str(work / "out"), "--device_target", "CPU",
               "--tta_mirror", args.tta_mirror, "--sw_batch_size", str(sw_batch)]
    start = time.perf_counter()
    child = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if child.returncode != 0:
        raise SystemExit(f"predict.py failed ({child.returncode}):\n{child.stderr[-3000:]}")
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    report = json.loads((work / "out" / f"{case.case_id}_report.json").read_text())
    return {
        "config": Path(args.config).name,
        "shape": list(shape),
        "spacing_mm": list(SPACING),
        "target_spacing": plan["target_spacing"],
        "patch_size": plan["patch_size"],
        "features": plan["features"],
        "windows": windows,
        "sw_batch_size": sw_batch,
        "tta_mirror": args.tta_mirror == "true",
        "peak_rss_gb": round(peak_kb / 1024 ** 2, 3),
        "seconds": round(seconds, 1),
        "predicted_kidney_ml": round(report["volumes_ml"]["kidney"]["total"], 1),
        "last_stdout_line": child.stdout.strip().splitlines()[-1] if child.stdout.strip() else "",
    }


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
        print(f"predict.py on {result['shape']} voxels: peak RSS {result['peak_rss_gb']} GB, "
              f"{result['seconds']} s, {result['windows']} windows of {result['patch_size']}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()

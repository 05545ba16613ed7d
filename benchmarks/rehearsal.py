"""Full-size rehearsal of a shipped config: preprocess, two training iterations with validation, export,
predict, each as the user runs it, with wall time and peak memory per step.

    python -m benchmarks.rehearsal --config config/kits19_bdci.yaml [--slices 100 300 1000]
        [--train_slices 100] [--train_cases 2] [--rows 512] [--steps preprocess train export predict]
        [--fold 0] [--slice_mm 3] [--tta_mirror true|false] [--untrained] [--max_rss_gb 12]
        [--min_free_gb 1] [--max_step_minutes M] [--keep DIR] [--json] [--key value ...]

Data: ``--train_cases`` synthetic phantoms (``src.data.synthetic``, kidneys and tumours) in the config's
dataset layout (kits19, kits21 or MOTS), each rendered at the generator's native size and written again
at ``train_slices x rows x rows`` (image trilinear, labels nearest), magnified evenly to KiTS's 400 mm
field of view (in-plane 400/rows mm: the generator shrinks its bodies to fit few voxels), so the files
have real KiTS size in voxels and in millimetres. The prediction sweep uses
``benchmarks.preprocess_case.write_kits_case``, one case per ``--slices`` value at ``slice_mm`` x 400/rows
x 400/rows mm (3 x 0.78 x 0.78 at 512 rows): with a fixed slice thickness the resampled grid and the
number of windows grow with the slices, the hard case for memory.

Steps, each a child process of the real entry script with ``--device_target CPU`` and otherwise the
config (patch, network, batch, loss, augmentation, workers) unless a ``--key value`` override is given,
which goes to every step: ``prepare.py preprocess``; ``train.py --fold F --epochs 1 --iters_per_epoch 2
--val_iters 1``; ``export.py --file_format MINDIR``; ``predict.py --ckpt`` with the trained checkpoint on
each sweep case. DoDNet (``mots_dodnet``) is the pretraining model, which export.py and predict.py refuse
by design, so its default steps are preprocess and train.

Each step is measured by ``benchmarks.measured_process.run_step``: wall time, the step's own peak resident
set (``peak_rss_gb``) and its process tree's (``peak_tree_gb``, workers included). A step whose tree passes
``--max_rss_gb``, or during which the machine's available memory falls below ``--min_free_gb``, is
stopped, so that a runaway run cannot exhaust a shared machine; so is a step running longer than
``--max_step_minutes``, whose ``progress`` records the last progress-bar count it printed.
The last line printed is one JSON object; the exit status is 1 when a step failed or was stopped.
"""
import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import src  # noqa: F401  (CPU fast-path environment before anything imports mindspore)
from benchmarks.measured_process import GB, run_step
from benchmarks.preprocess_case import write_kits_case
from src.data.plan import Plan
from src.files import atomic_produce

ROOT = Path(__file__).resolve().parents[1]
STEPS = ("preprocess", "train", "export", "predict")
FIELD_OF_VIEW_MM = 400.0  # KiTS: 512 pixels of ~0.78 mm
TRAIN_FLAGS = ("--epochs", "1", "--iters_per_epoch", "2", "--val_iters", "1")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "config" / "kits19_bdci.yaml"),
                        help="yaml config, or the name of a shipped one (kits19_bdci, kits21_nnunet, ...)")
    parser.add_argument("--slices", type=int, nargs="+", default=[100], help="slices of each prediction case")
    parser.add_argument("--train_slices", type=int, default=100, help="slices of each training case")
    parser.add_argument("--train_cases", type=int, default=2, help="synthetic training cases (2: one trains, one validates)")
    parser.add_argument("--rows", type=int, default=512, help="rows and columns per slice")
    parser.add_argument("--slice_mm", type=float, default=3.0, help="slice thickness of the prediction cases")
    parser.add_argument("--steps", nargs="+", choices=STEPS, default=None,
                        help="steps to run (default: all four; preprocess and train for DoDNet)")
    parser.add_argument("--fold", default="0", help="fold to train (0.. or all)")
    parser.add_argument("--tta_mirror", choices=("true", "false"), default=None,
                        help="mirroring at prediction (default: the config's; it multiplies the time by 8)")
    parser.add_argument("--untrained", action="store_true",
                        help="export and predict the planned network with random weights (predict_case's checkpoint) "
                             "instead of the trained one, for a machine where training cannot run")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic training cases")
    parser.add_argument("--max_rss_gb", type=float, default=12.0,
                        help="stop a step whose process tree's memory passes this")
    parser.add_argument("--min_free_gb", type=float, default=1.0,
                        help="stop a step when the machine's available memory falls below this")
    parser.add_argument("--max_step_minutes", type=float, default=None,
                        help="stop a step running longer than this (its progress so far is reported)")
    parser.add_argument("--keep", default=None, help="work in this folder and keep it (default: a temporary one)")
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    return parser


def parse_args(argv=None):
    """(args, overrides): unknown ``--key value`` pairs are config overrides for every step."""
    args, overrides = build_parser().parse_known_args(argv)
    if overrides and not overrides[0].startswith("--"):
        raise SystemExit(f"rehearsal: unexpected argument {overrides[0]!r}")
    args.config = str(config_path(args.config))
    return args, overrides


def config_path(name: str) -> Path:
    path = Path(name)
    if not path.suffix and not path.exists():
        path = ROOT / "config" / f"{name}.yaml"
    if not path.is_file():
        raise SystemExit(f"rehearsal: no config {name}")
    return path


def default_steps(network: str) -> list:
    return ["preprocess", "train"] if network == "dodnet" else list(STEPS)


# ---------------------------------------------------------------- synthetic data at real size

def rescaled_affine(affine, old_shape, new_shape, magnify: float = 1.0):
    """The affine of the same volume sampled on ``new_shape`` voxels (voxel edges kept), its world
    coordinates then multiplied by ``magnify``."""
    import numpy as np

    ratio = np.asarray(old_shape, float) / np.asarray(new_shape, float)
    out = np.array(affine, dtype=np.float64)
    out[:3, 3] = magnify * (affine[:3, 3] + affine[:3, :3] @ (0.5 * ratio - 0.5))
    out[:3, :3] = magnify * affine[:3, :3] * ratio
    return out


def resize_case(image_path: Path, label_path: Path, shape) -> None:
    """Rewrite an image/label pair at ``shape`` voxels, magnified to a FIELD_OF_VIEW_MM field of view
    (the larger in-plane extent), in place."""
    import nibabel as nib
    import numpy as np
    from scipy import ndimage

    image, label = nib.load(str(image_path)), nib.load(str(label_path))
    old_shape = image.shape
    zoom = [n / o for n, o in zip(shape, old_shape)]
    extent = max(n * z for n, z in zip(old_shape[1:], image.header.get_zooms()[1:]))
    affine = rescaled_affine(image.affine, old_shape, shape, FIELD_OF_VIEW_MM / extent)
    arrays = ((image_path, np.asanyarray(image.dataobj), 1), (label_path, np.asanyarray(label.dataobj), 0))
    for path, array, order in arrays:
        resized = ndimage.zoom(array, zoom, output=array.dtype, order=order, mode="nearest", grid_mode=True)
        assert resized.shape == tuple(shape), (resized.shape, shape)
        out = nib.Nifti1Image(resized, affine)
        out.header.set_xyzt_units("mm", "sec")
        out.set_qform(affine, code=1)
        out.set_sform(affine, code=1)
        atomic_produce(path, lambda tmp, image=out: nib.save(image, str(tmp)), suffix=".nii.gz")


def write_training_cases(raw: Path, fmt: str, cases: int, shape, seed: int) -> list:
    """``cases`` synthetic phantoms in ``fmt``'s layout, rewritten at ``shape``; returns their records."""
    from src.data.synthetic import INDEX_NAME, write_synthetic_dataset

    write_synthetic_dataset(raw, fmt, cases, seed, progress=False)
    records = json.loads((raw / INDEX_NAME).read_text())["cases"]
    for record in records:
        resize_case(raw / record["image"], raw / record["label"], shape)
    return records


def sweep_windows(slices: int, rows: int, slice_mm: float, plan: Plan, step_size: float) -> int:
    from src.infer.sliding_window import window_layout

    spacing = (slice_mm, FIELD_OF_VIEW_MM / rows, FIELD_OF_VIEW_MM / rows)
    resampled = [max(1, round(n * s / t)) for n, s, t in zip((slices, rows, rows), spacing, plan.target_spacing)]
    return len(window_layout(resampled, plan.patch_size, step_size).starts)


# ---------------------------------------------------------------- the rehearsal

def step_config(args, overrides):
    """The config every step sees: the yaml, ``--device_target CPU`` and the overrides."""
    from src.config import add_config_arguments, config_from_args

    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    add_config_arguments(parser)
    return config_from_args(parser.parse_args(["--config", args.config, "--device_target", "CPU", *overrides]))


def checkpoint_path(args, work: Path) -> Path:
    return work / ("untrained" if args.untrained else f"runs/fold_{args.fold}") / "checkpoint_best.ckpt"


def step_commands(args, overrides, work: Path) -> dict:
    py, cfg = sys.executable, args.config
    common = ["--device_target", "CPU", *overrides]
    ckpt = checkpoint_path(args, work)
    return {
        "preprocess": [py, ROOT / "prepare.py", "preprocess", "--raw", work / "raw", "--out", work / "pre",
                       "--config", cfg, *common],
        "train": [py, ROOT / "train.py", "--config", cfg, "--data", work / "pre", "--fold", args.fold,
                  "--output", work / "runs", "--overwrite", *TRAIN_FLAGS, *common],
        "export": [py, ROOT / "export.py", "--config", cfg, "--ckpt", ckpt, "--file_name", work / "export" / "model",
                   "--file_format", "MINDIR", "--overwrite", *common],
        "predict": [py, ROOT / "predict.py", "--config", cfg, "--ckpt", ckpt, "--overwrite", *common]
        + (["--tta_mirror", args.tta_mirror] if args.tta_mirror else []),
    }


def machine() -> dict:
    flags = set()
    model = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags |= set(line.split(":", 1)[1].split())
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=False).stdout.strip()
    except OSError:
        commit = ""
    return {"cpu": model, "cpus": len(os.sched_getaffinity(0)), "avx2": "avx2" in flags,
            "avx512": "avx512f" in flags, "memory_gb": round(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / GB, 1),
            "commit": commit}


def rehearse(args, overrides, work: Path, say=print) -> dict:
    cfg = step_config(args, overrides)
    steps = args.steps or default_steps(cfg.network)
    commands = step_commands(args, overrides, work)
    result = {"config": Path(args.config).stem, "dataset": cfg.dataset, "network": cfg.network,
              "overrides": overrides, "train_cases": args.train_cases, "rows": args.rows,
              "train_slices": args.train_slices, "fold": args.fold, "untrained": args.untrained,
              "tta_mirror": cfg.tta_mirror if args.tta_mirror is None else args.tta_mirror == "true",
              "machine": machine(), "steps": {}, "predict": {}}
    if "preprocess" in steps:
        start = time.perf_counter()
        shape = (args.train_slices, args.rows, args.rows)
        say(f"writing {args.train_cases} synthetic {cfg.dataset} cases of {shape} voxels")
        write_training_cases(work / "raw", cfg.dataset, args.train_cases, shape, args.seed)
        result["data_seconds"] = round(time.perf_counter() - start, 1)
    failed = None
    for step in [s for s in STEPS if s in steps and s != "predict"]:
        if step == "export" and args.untrained and not failed:
            write_untrained(cfg, work, checkpoint_path(args, work))
        if failed:
            result["steps"][step] = {"ok": False, "error": f"not run: {failed} failed"}
            continue
        say(f"{step}: {' '.join(map(str, commands[step]))}")
        result["steps"][step] = outcome = run_step(commands[step], work / "logs" / step, args.max_rss_gb, args.min_free_gb,
                                                       max_minutes=args.max_step_minutes)
        say(f"{step}: {summary(outcome)}")
        failed = None if outcome["ok"] or (step == "train" and args.untrained) else step
    if "predict" in steps:
        if args.untrained and not failed and not checkpoint_path(args, work).is_file():
            write_untrained(cfg, work, checkpoint_path(args, work))
        plan = Plan.read(plan_file(work)) if plan_file(work).is_file() else None
        for slices in args.slices:
            key = str(slices)
            if failed:
                result["predict"][key] = {"ok": False, "error": f"not run: {failed} failed"}
                continue
            folder = work / f"predict_{slices}"
            spacing = (args.slice_mm, FIELD_OF_VIEW_MM / args.rows, FIELD_OF_VIEW_MM / args.rows)
            case = write_kits_case(folder / "raw", (slices, args.rows, args.rows), spacing)
            command = commands["predict"] + ["--input", case.image, "--output", folder / "out"]
            say(f"predict {slices} slices: {' '.join(map(str, command))}")
            outcome = run_step(command, work / "logs" / f"predict_{slices}", args.max_rss_gb, args.min_free_gb,
                               max_minutes=args.max_step_minutes)
            outcome["shape"], outcome["spacing_mm"] = [slices, args.rows, args.rows], [round(x, 5) for x in spacing]
            if plan:
                outcome["windows"] = sweep_windows(slices, args.rows, args.slice_mm, plan, cfg.step_size)
            result["predict"][key] = outcome
            say(f"predict {slices} slices: {summary(outcome)}")
            case.image.unlink()  # a 1000-slice case is a few hundred MB
            case.label.unlink()
    if plan_file(work).is_file():
        plan = Plan.read(plan_file(work))
        result["plan"] = {"target_spacing": plan.target_spacing, "patch_size": plan.patch_size,
                          "stages": len(plan.strides)}
    result["ok"] = all(o.get("ok") for o in [*result["steps"].values(), *result["predict"].values()])
    return result


def write_untrained(cfg, work: Path, ckpt: Path) -> None:
    from benchmarks.predict_case import write_random_checkpoint

    ckpt.parent.mkdir(parents=True, exist_ok=True)
    write_random_checkpoint(cfg, Plan.read(plan_file(work)), ckpt)


def plan_file(work: Path) -> Path:
    return work / "pre" / "plans.json"


def summary(outcome: dict) -> str:
    text = (f"{outcome.get('seconds', '-')} s, peak RSS {outcome.get('peak_rss_gb', '-')} GB, "
            f"process tree {outcome.get('peak_tree_gb', '-')} GB")
    return text if outcome.get("ok") else f"FAILED ({outcome.get('error')}); {text}"


def main(argv=None) -> int:
    args, overrides = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so a killed rehearsal stops its step too
    say = (lambda *a: None) if args.json else (lambda *a: print(*a, flush=True))
    if args.keep:
        work = Path(args.keep).resolve()
        work.mkdir(parents=True, exist_ok=True)
        result = rehearse(args, overrides, work, say)
    else:
        with tempfile.TemporaryDirectory(prefix="rehearsal_") as tmp:
            result = rehearse(args, overrides, Path(tmp), say)
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

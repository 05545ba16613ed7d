"""Throughput of the training data pipeline (patch sampling + full nnU-Net augmentation + DS targets).

    python -m benchmarks.data_loader [--json] [--batches N] [--workers 1 2] [--skip_train_step]

Two settings: the demo config's patch (32 x 64 x 64 unless --demo_patch) on a case of 100 x 128 x 128 at
1 mm, and the BDCI patch 80 x 160 x 160 on a KiTS19-sized case at 3.22 x 1.62 x 1.62 mm (128 x 248 x 248).
Each setting's plan is made by the planner (``src.data.planning.plan_experiment`` with the setting's spacing
and patch: the strides, hence the deep-supervision targets, are the planned ones) and each fake case is
written once as ``<case>.npz`` with the members preprocessing writes (data, seg, ``fg_<label>`` drawn by
``sample_foreground_coords``, the plan's identity), so the loader reads it as a training run does. For
each setting:
the cost of every transform when forced to fire (median ms per sample) and its expected cost per sample
at nnU-Net's probabilities; batches per second in this process; and batches per second out of the
MindSpore dataset with 1 and 2 workers (the first batch, which pays for worker start-up, is not
counted). Unless --skip_train_step, ``benchmarks.train_step`` times one SGD step at the demo patch for
comparison (the loader must deliver a batch faster than a step). The last line is one JSON object.
"""
import src  # noqa: F401  (the oneDNN ISA must be chosen before MindSpore is imported)

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from src.config import Config
from src.data.augment import (AddGaussianNoise, GammaCorrection, GaussianBlur, MirrorAxes, ScaleBrightness,
                              ScaleContrast, SimulateLowResolution, SpatialTransform, build_train_transforms,
                              rotation_matrix)
from src.data.dataset import iterate_batches
from src.data.layouts import KITS19_LABELS
from src.data.plan import Plan
from src.data.planning import plan_experiment
from src.data.preprocess import sample_foreground_coords
from src.data.preprocessed_case import PLAN_ID_MEMBER, plan_id_array
from src.errors import UserError, exit_on_user_error

SETTINGS = {"demo": {"case_shape": (100, 128, 128), "spacing": (1.0, 1.0, 1.0)},
            "bdci": {"case_shape": (128, 248, 248), "spacing": (3.22, 1.62, 1.62), "patch": (80, 160, 160)}}
# the fake cases are normalized already: these only enter the plan's identity
INTENSITY = {"mean": 0.0, "std": 1.0, "p005": -3.0, "p995": 3.0}


def setting_plan(case_ids, case_shape, spacing, patch) -> Plan:
    """The plan preprocessing would write for ``case_ids`` of ``case_shape`` at ``spacing`` with ``patch``."""
    fingerprint = {"spacings": [list(spacing)] * len(case_ids), "shapes_after_crop": [list(case_shape)] * len(case_ids),
                   "intensity": INTENSITY, "case_ids": list(case_ids)}
    return plan_experiment(fingerprint, KITS19_LABELS, target_spacing=spacing, patch_size=patch,
                           dataset="data_loader benchmark")


def write_fake_case(folder: Path, case_id: str, shape, plan: Plan, seed: int = 0) -> None:
    """A CT-like normalized volume with a kidney-sized ellipsoid and a tumour, in the npz members
    preprocessing writes for ``plan``."""
    rng = np.random.default_rng(seed)
    data = rng.normal(0.0, 1.0, size=(1, *shape)).astype(np.float32)
    grid = np.ogrid[tuple(slice(0, s) for s in shape)]
    centre = [s * f for s, f in zip(shape, (0.5, 0.55, 0.35))]
    radii = [s * f for s, f in zip(shape, (0.2, 0.1, 0.08))]
    kidney = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1
    tumour = sum(((g - c) / (0.4 * r)) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1
    seg = np.zeros(shape, dtype=np.int8)
    seg[kidney] = 1
    seg[tumour] = 2
    arrays = {"data": data, "seg": seg, PLAN_ID_MEMBER: plan_id_array(plan.identity)}
    coords = sample_foreground_coords(seg, [v for v in plan.labels.values() if v > 0])
    arrays.update({f"fg_{value}": c for value, c in coords.items()})
    np.savez(folder / f"{case_id}.npz", **arrays)


def forced_transform_costs(patch, repeats: int) -> dict:
    """Median ms per sample of each transform made to fire, and its expected share per sample."""
    rng = np.random.default_rng(0)
    spatial = SpatialTransform(patch)
    matrix = rotation_matrix((0.3, -0.2, 0.25)) * 0.9
    region = spatial.required_input_shape(matrix)
    big = rng.standard_normal((1, *region)).astype(np.float32)
    big_seg = (big[0] > 1).astype(np.int8) + (big[0] > 2)
    data = big[:, :patch[0], :patch[1], :patch[2]].copy()
    seg = big_seg[:patch[0], :patch[1], :patch[2]].copy()
    cases = {  # name: (call, probability of firing per sample)
        "rotation_scaling": (lambda: spatial.apply(big, big_seg, matrix), 1 - 0.8 * 0.8),
        "noise": (lambda: AddGaussianNoise(p=1)(data, seg, rng), 0.1),
        "blur": (lambda: GaussianBlur(p=1, p_per_channel=1)(data, seg, rng), 0.2 * 0.5),
        "brightness": (lambda: ScaleBrightness(p=1)(data, seg, rng), 0.15),
        "contrast": (lambda: ScaleContrast(p=1)(data, seg, rng), 0.15),
        "low_resolution": (lambda: SimulateLowResolution(p=1, p_per_channel=1)(data, seg, rng), 0.25 * 0.5),
        "gamma": (lambda: GammaCorrection(p=1)(data, seg, rng), 0.1 + 0.3),
        "mirror": (lambda: [np.ascontiguousarray(a) for a in MirrorAxes(p_per_axis=1)(data, seg, rng)], 1.0),
    }
    costs = {}
    for name, (call, probability) in cases.items():
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
        fired_ms = 1000 * statistics.median(times)
        costs[name] = {"fired_ms": round(fired_ms, 2), "expected_ms": round(fired_ms * probability, 2)}
    return costs


def in_process_rate(cfg, plan, folder, case_ids, batches: int) -> float:
    start = time.perf_counter()
    count = sum(1 for _ in iterate_batches(cfg, plan, folder, case_ids, epoch=0))
    return count / (time.perf_counter() - start)


def mindspore_rate(cfg, plan, folder, case_ids) -> dict:
    from src.data.dataset import build_train_dataset

    started = time.perf_counter()
    dataset = build_train_dataset(cfg, plan, folder, case_ids, epoch=1)
    iterator = dataset.create_tuple_iterator(num_epochs=1, output_numpy=True)
    next(iterator)
    first = time.perf_counter()
    count = sum(1 for _ in iterator)
    rate = count / (time.perf_counter() - first)
    return {"batches_per_s": round(rate, 3), "first_batch_s": round(first - started, 3)}


def train_step_seconds(patch, stages: int, repeats: int):
    command = [sys.executable, "-m", "benchmarks.train_step", "--patch", *map(str, patch), "--batch", "2",
               "--stages", str(stages), "--repeats", str(repeats), "--warmup", "1", "--json"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        print(f"note: benchmarks.train_step failed: {done.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return None
    return json.loads(lines[-1])["train_step_s"]


def run_setting(name, patch, case_shape, spacing, args, folder: Path) -> dict:
    case_ids = [f"{name}_case_{i}" for i in range(2)]
    plan = setting_plan(case_ids, case_shape, spacing, patch)
    patch = tuple(plan.patch_size)
    for i, case_id in enumerate(case_ids):
        write_fake_case(folder, case_id, case_shape, plan, seed=i)
    result = {"patch": list(patch), "case_shape": list(case_shape), "spacing": list(spacing),
              "strides": plan.strides,
              "spatial_in_plane_only": build_train_transforms(patch).spatial.in_plane_only,
              "transforms": forced_transform_costs(patch, args.transform_repeats)}
    result["expected_augment_ms_per_sample"] = round(sum(c["expected_ms"] for c in result["transforms"].values()), 1)
    cfg = Config(seed=1, batch_size=2, iters_per_epoch=args.batches, num_workers=1, augment=True)
    result["in_process_batches_per_s"] = round(in_process_rate(cfg, plan, folder, case_ids, args.batches), 3)
    for workers in args.workers:
        # one more batch than timed: the first pays for worker start-up
        cfg = cfg.replace(num_workers=workers, iters_per_epoch=args.batches + 1)
        result[f"workers_{workers}"] = mindspore_rate(cfg, plan, folder, case_ids)
    return result


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="end with one JSON line (always printed last)")
    parser.add_argument("--batches", type=int, default=12, help="timed batches per measurement")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--transform_repeats", type=int, default=5)
    parser.add_argument("--demo_patch", type=int, nargs=3, default=[32, 64, 64], metavar=("Z", "Y", "X"))
    parser.add_argument("--settings", nargs="+", default=["demo", "bdci"], choices=sorted(SETTINGS))
    parser.add_argument("--skip_train_step", action="store_true")
    parser.add_argument("--train_step_repeats", type=int, default=3)
    args = parser.parse_args(argv)
    if args.batches < 2 or min(args.workers) < 1:
        raise UserError("--batches must be at least 2 and --workers at least 1")
    return args


@exit_on_user_error
def main(argv=None):
    args = parse_args(argv)
    summary = {}
    with tempfile.TemporaryDirectory(prefix="loader_bench_") as tmp:
        for name in args.settings:
            patch = tuple(SETTINGS[name].get("patch", args.demo_patch))
            setting = SETTINGS[name]
            result = run_setting(name, patch, setting["case_shape"], setting["spacing"], args, Path(tmp))
            summary[name] = result
            costs = ", ".join(f"{k} {v['fired_ms']:.0f}" for k, v in result["transforms"].items())
            print(f"{name}: patch {patch}, case {result['case_shape']}; ms per sample when fired: {costs}; "
                  f"expected augmentation {result['expected_augment_ms_per_sample']} ms/sample")
            rates = ", ".join(f"{w} worker(s) {result[f'workers_{w}']['batches_per_s']:.2f}" for w in args.workers)
            print(f"{name}: batches/s (batch 2): in-process {result['in_process_batches_per_s']:.2f}; "
                  f"MindSpore dataset {rates}")
    if not args.skip_train_step and "demo" in summary:
        step = train_step_seconds(summary["demo"]["patch"], len(summary["demo"]["strides"]), args.train_step_repeats)
        summary["demo"]["train_step_s"] = step
        if step:
            best = max(summary["demo"][f"workers_{w}"]["batches_per_s"] for w in args.workers)
            summary["demo"]["loader_batch_s_vs_train_step"] = round((1 / best) / step, 3)
            print(f"demo: train step {step:.3f} s vs {1 / best:.3f} s per batch from the loader "
                  f"(ratio {(1 / best) / step:.3f}; below 1 = the loader keeps up)")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()

"""Time one KiTS-sized case through read -> crop -> normalize -> resample -> write, ours against nnU-Net v2.

    python -m benchmarks.preprocess_case [--json] [--reference] [--repeats N]

A synthetic CT case (default 80 x 512 x 512 at 3 x 0.78 x 0.78 mm, KiTS19 layout and affine) is written to
a temporary folder once. Each repeat times, for our pipeline, ``src.data.preprocess.preprocess_case`` (read
image and label, crop to nonzero, CT normalization, resample to the target spacing, foreground
coordinates, write ``.npz`` + ``.json``) and, with ``--reference``, nnU-Net v2's ``DefaultPreprocessor.
run_case_save`` on the same files with an equivalent plan (SimpleITK reader, transpose to put the slice
axis first, crop, CTNormalization, default resampling functions, foreground locations, Blosc2 write).
The resampling step alone (image + label map of the cropped, normalized case) is timed separately for
both. Ours and the reference alternate within each repeat so machine load hits both alike; medians are
reported. nnU-Net v2 needs the benchmark venv (``requirements-bench.txt``).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from src.data.io import load_image, load_label

from src.data.layouts import KITS19_LABELS, CaseFiles
from src.data.fingerprint import crop_to_nonzero
from src.data.plan import Plan
from src.data.preprocess import normalize_intensity, preprocess_case
from src.data.resample import compute_new_shape, needs_separate_z, resample_image, resample_segmentation
from src.errors import UserError, exit_on_user_error

PATCH_SIZE = (80, 160, 160)


# ---------------------------------------------------------------- synthetic case

def _ellipsoid(grid, centre, radii):
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1.0


def synthesize_ct(shape, spacing, seed: int = 0):
    """(int16 HU volume, uint8 labels): air, a body with fat and muscle, spine, two kidneys, one tumour.

    Sizes are fractions of the field of view (KiTS: ~400 mm in plane), so any shape has all structures.
    """
    rng = np.random.default_rng(seed)
    # physical coordinates (mm) from the volume centre, broadcastable (d0, 1, 1), (1, d1, 1), (1, 1, d2)
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    grid = [((g - (n - 1) / 2) * s).astype(np.float32) for g, n, s in zip(grid, shape, spacing)]
    depth, height, width = (n * s for n, s in zip(shape, spacing))
    image = np.full(shape, -1000.0, dtype=np.float32)
    for value, centre, radii in ((-90.0, (0, 0), (0.33, 0.41)), (45.0, (0.01, 0), (0.28, 0.36)),
                                 (650.0, (0.17, 0), (0.045, 0.045))):
        inside = _ellipse_in_plane(grid, (centre[0] * height, centre[1] * width),
                                   (radii[0] * height, radii[1] * width))
        image[np.broadcast_to(inside, shape)] = value
    label = np.zeros(shape, dtype=np.uint8)
    for side in (-1, 1):
        kidney = _ellipsoid(grid, (0.0, 0.09 * height, side * 0.16 * width),
                            (0.3 * depth, 0.08 * height, 0.065 * width))
        image[kidney] = 170.0
        label[kidney] = 1
    tumour = _ellipsoid(grid, (0.1 * depth, 0.075 * height, 0.21 * width),
                        (0.12 * depth, 0.05 * height, 0.05 * width)) & (label == 1)
    image[tumour] = 95.0
    label[tumour] = 2
    image += rng.standard_normal(shape, dtype=np.float32) * 18.0
    return np.round(image).astype(np.int16), label


def _ellipse_in_plane(grid, centre, radii):
    return ((grid[1] - centre[0]) / radii[0]) ** 2 + ((grid[2] - centre[1]) / radii[1]) ** 2 <= 1.0


def write_kits_case(folder: Path, shape, spacing, seed: int = 0) -> CaseFiles:
    """KiTS19 layout (``case_00000/imaging.nii.gz`` + ``segmentation.nii.gz``) with KiTS's negated axes."""
    image, label = synthesize_ct(shape, spacing, seed)
    affine = np.zeros((4, 4))
    affine[0, 2], affine[1, 1], affine[2, 0], affine[3, 3] = -spacing[2], -spacing[1], -spacing[0], 1.0
    case_dir = folder / "case_00000"
    case_dir.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(image, affine), str(case_dir / "imaging.nii.gz"))
    nib.save(nib.Nifti1Image(label, affine), str(case_dir / "segmentation.nii.gz"))
    return CaseFiles("case_00000", case_dir / "imaging.nii.gz", case_dir / "segmentation.nii.gz", None)


def foreground_intensity(case: CaseFiles) -> dict:
    """The fingerprint's intensity statistics, from this one case's foreground."""
    image, meta = load_image(case.image)
    voxels = image[load_label(case.label, like=meta) > 0].astype(np.float64)
    if voxels.size == 0:
        raise UserError(f"the synthetic case {case.image} has no foreground: use a larger --shape")
    return {"mean": float(voxels.mean()), "std": float(voxels.std()),
            "p005": float(np.percentile(voxels, 0.5)), "p995": float(np.percentile(voxels, 99.5))}


# ---------------------------------------------------------------- our pipeline

def our_plan(target_spacing, intensity: dict) -> Plan:
    # preprocessing reads no network topology, but a plan carries one: the smallest valid
    return Plan.from_json({"labels": dict(KITS19_LABELS), "num_classes": len(KITS19_LABELS),
                           "target_spacing": list(target_spacing), "normalization": "ct", "intensity": intensity,
                           "patch_size": [1, 1, 1], "features": [1], "conv_kernel_sizes": [[3, 3, 3]],
                           "strides": [[1, 1, 1]]})


def time_ours(case: CaseFiles, plan: Plan, out_dir: Path) -> float:
    start = time.perf_counter()
    preprocess_case(case, plan, out_dir)
    return time.perf_counter() - start


def cropped_normalized(case: CaseFiles, plan: Plan):
    """Inputs of the resampling step: (data (1, ...) float32, seg int16 with -1, spacing)."""
    image, meta = load_image(case.image)
    seg = load_label(case.label, like=meta)
    data, seg, _ = crop_to_nonzero(image[None], seg)
    return normalize_intensity(data, plan), seg, meta.spacing


def time_our_resampling(data, seg, spacing, target_spacing) -> float:
    new_shape = compute_new_shape(data.shape[1:], spacing, target_spacing)
    axis = needs_separate_z(spacing, target_spacing)
    start = time.perf_counter()
    resample_image(data, spacing, new_shape, order=3, separate_z_axis=axis)
    resample_segmentation(seg, spacing, new_shape, axis)
    return time.perf_counter() - start


# ---------------------------------------------------------------- nnU-Net v2

def nnunet_available() -> bool:
    return importlib.util.find_spec("nnunetv2") is not None


def nnunet_plans(target_spacing, intensity: dict, spacing_sitk_order) -> tuple[dict, dict]:
    """A minimal nnU-Net v2 plans dict (3d_fullres) and dataset.json equivalent to ``our_plan``.

    SimpleITK reverses the NIfTI axis order, so nnU-Net's planner would put the coarsest axis first via
    transpose_forward; the target spacing is given in that transposed order, which is ours.
    """
    coarse = int(np.argmax(spacing_sitk_order))
    forward = [coarse] + [a for a in range(3) if a != coarse]
    backward = [int(i) for i in np.argsort(forward)]
    resampling = "resample_data_or_seg_to_shape"
    configuration = {
        "data_identifier": "bench_3d_fullres", "preprocessor_name": "DefaultPreprocessor", "batch_size": 2,
        "patch_size": list(PATCH_SIZE), "median_image_size_in_voxels": [75, 247, 247],
        "spacing": list(target_spacing), "normalization_schemes": ["CTNormalization"],
        "use_mask_for_norm": [False],
        "resampling_fn_data": resampling,
        "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
        "resampling_fn_seg": resampling,
        "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
        "resampling_fn_probabilities": resampling,
        "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0,
                                               "force_separate_z": None},
        "architecture": {"network_class_name": "unused", "arch_kwargs": {}, "_kw_requires_import": []},
        "batch_dice": False,
    }
    plans = {
        "dataset_name": "Dataset900_Bench", "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": list(target_spacing),
        "original_median_shape_after_transp": [80, 512, 512],
        "image_reader_writer": "SimpleITKIO", "transpose_forward": forward, "transpose_backward": backward,
        "configurations": {"3d_fullres": configuration},
        "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {"0": {
            "mean": intensity["mean"], "std": intensity["std"], "percentile_00_5": intensity["p005"],
            "percentile_99_5": intensity["p995"], "min": intensity["p005"], "max": intensity["p995"],
            "median": intensity["mean"]}},
    }
    dataset_json = {"channel_names": {"0": "CT"}, "labels": dict(KITS19_LABELS), "numTraining": 1,
                    "file_ending": ".nii.gz"}
    return plans, dataset_json


class NnunetReference:
    """nnU-Net v2's DefaultPreprocessor on one case, set up once."""

    def __init__(self, case: CaseFiles, target_spacing, intensity: dict):
        from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        import SimpleITK as sitk

        spacing_sitk_order = sitk.ReadImage(str(case.image)).GetSpacing()[::-1]
        plans, self.dataset_json = nnunet_plans(target_spacing, intensity, spacing_sitk_order)
        self.plans_manager = PlansManager(plans)
        self.configuration = self.plans_manager.get_configuration("3d_fullres")
        self.preprocessor = DefaultPreprocessor(verbose=False)
        self.case = case

    def time_case(self, out_dir: Path) -> float:
        start = time.perf_counter()
        self.preprocessor.run_case_save(str(out_dir / self.case.case_id), [str(self.case.image)],
                                        str(self.case.label), self.plans_manager, self.configuration,
                                        self.dataset_json)
        return time.perf_counter() - start

    def agreement(self, ours_npz: Path, nnunet_dir: Path) -> dict:
        """Image correlation and per-label Dice between our and nnU-Net's outputs for this case."""
        import blosc2

        prefix = nnunet_dir / self.case.case_id
        theirs_data = blosc2.open(str(prefix) + ".b2nd", mode="r")[:]
        theirs_seg = blosc2.open(str(prefix) + "_seg.b2nd", mode="r")[:]
        # nnU-Net's axes are SimpleITK's (reversed NIfTI order) permuted by transpose_forward
        nifti_axis_of = [2 - a for a in self.plans_manager.transpose_forward]
        to_ours = [0] + [1 + int(i) for i in np.argsort(nifti_axis_of)]
        theirs_data, theirs_seg = theirs_data.transpose(to_ours), theirs_seg.transpose(to_ours)
        with np.load(ours_npz) as ours:
            data, seg = ours["data"], ours["seg"]
        if data.shape != theirs_data.shape:
            return {"shape_mismatch": [list(data.shape), list(theirs_data.shape)]}
        dice = {}
        for label in sorted(set(np.unique(seg).tolist()) | set(np.unique(theirs_seg).tolist())):
            a, b = seg == label, theirs_seg[0] == label
            dice[str(label)] = round(float(2 * np.logical_and(a, b).sum() / max(a.sum() + b.sum(), 1)), 5)
        correlation = float(np.corrcoef(data.ravel(), theirs_data.ravel())[0, 1])
        return {"image_correlation": round(correlation, 6),
                "image_max_abs_diff": round(float(np.abs(data - theirs_data).max()), 6), "label_dice": dice}

    def time_resampling(self, data, seg, spacing, target_spacing) -> float:
        new_shape = compute_new_shape(data.shape[1:], spacing, target_spacing)
        start = time.perf_counter()
        self.configuration.resampling_fn_data(data, new_shape, spacing, target_spacing)
        self.configuration.resampling_fn_seg(seg[None], new_shape, spacing, target_spacing)
        return time.perf_counter() - start


# ---------------------------------------------------------------- driver

def machine_description() -> str:
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        model = next(line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        model = platform.processor() or "unknown CPU"
    return f"{model}, {os.cpu_count()} cores"


def run(shape, spacing, target_spacing, repeats: int, reference: bool, log=print) -> dict:
    if reference and not nnunet_available():
        raise UserError("--reference needs nnunetv2: install requirements-bench.txt into a separate venv")
    with tempfile.TemporaryDirectory(prefix="bench_preprocess_") as tmp:
        tmp = Path(tmp)
        log(f"writing a synthetic case {tuple(shape)} at {tuple(spacing)} mm ...")
        case = write_kits_case(tmp / "raw", shape, spacing)
        intensity = foreground_intensity(case)
        plan = our_plan(target_spacing, intensity)
        data, seg, case_spacing = cropped_normalized(case, plan)
        nnunet = NnunetReference(case, target_spacing, intensity) if reference else None
        times = {"ours_total_s": [], "ours_resample_s": [], "reference_total_s": [], "reference_resample_s": []}
        agreement = None
        for repeat in range(repeats):
            out = tmp / f"out_{repeat}"
            (out / "ours").mkdir(parents=True)
            times["ours_total_s"].append(time_ours(case, plan, out / "ours"))
            times["ours_resample_s"].append(time_our_resampling(data, seg, case_spacing, target_spacing))
            if nnunet is not None:
                (out / "nnunet").mkdir()
                times["reference_total_s"].append(nnunet.time_case(out / "nnunet"))
                times["reference_resample_s"].append(nnunet.time_resampling(data, seg, case_spacing,
                                                                            target_spacing))
                if agreement is None:
                    agreement = nnunet.agreement(out / "ours" / f"{case.case_id}.npz", out / "nnunet")
                    log(f"agreement with nnU-Net v2: {agreement}")
            log(f"repeat {repeat + 1}/{repeats}: " + ", ".join(f"{k} {v[-1]:.2f}" for k, v in times.items() if v))
    result = {
        "benchmark": "preprocess_case", "shape": list(shape), "spacing": list(spacing),
        "target_spacing": list(target_spacing),
        "new_shape": list(compute_new_shape(shape, spacing, target_spacing)),
        "repeats": repeats, "machine": machine_description(),
        "pipeline": "src.data.preprocess.preprocess_case (nibabel read, npz write)",
    }
    result.update({k: round(statistics.median(v), 3) for k, v in times.items() if v})
    if nnunet is not None:
        result["reference"] = "nnunetv2 DefaultPreprocessor.run_case_save (SimpleITK read, Blosc2 write)"
        result["total_ratio"] = round(result["ours_total_s"] / result["reference_total_s"], 3)
        result["resample_ratio"] = round(result["ours_resample_s"] / result["reference_resample_s"], 3)
        result["agreement"] = agreement
    return result


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reference", action="store_true", help="also time nnU-Net v2 (needs nnunetv2)")
    parser.add_argument("--json", action="store_true", help="print only the JSON result line")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--shape", type=int, nargs=3, default=[80, 512, 512])
    parser.add_argument("--spacing", type=float, nargs=3, default=[3.0, 0.78, 0.78])
    parser.add_argument("--target_spacing", type=float, nargs=3, default=[3.22, 1.62, 1.62])
    args = parser.parse_args(argv)
    if args.repeats < 1 or min(args.shape) < 1 or min(args.spacing + args.target_spacing) <= 0:
        parser.error("--repeats and --shape need positive values, spacings must be positive")
    return args


@exit_on_user_error
def main(argv=None) -> None:
    args = parse_args(argv)
    log = (lambda *_: None) if args.json else (lambda message: print(message, file=sys.stderr, flush=True))
    result = run(args.shape, args.spacing, args.target_spacing, args.repeats, args.reference, log)
    if not args.json:
        for key in ("ours_total_s", "reference_total_s", "total_ratio", "ours_resample_s", "reference_resample_s",
                    "resample_ratio"):
            if key in result:
                print(f"{key:>22}: {result[key]}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()

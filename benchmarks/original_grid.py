"""Where predict.py's memory goes on the original grid: peak resident memory of each step after the network.

    python -m benchmarks.original_grid [--slices 1000] [--slice_mm 0.5] [--rows 512]
                                       [--postprocess none|lcc] [--keep DIR] [--json]

No network: a synthetic KiTS19 case (``benchmarks.preprocess_case.write_kits_case``) is read and
preprocessed as predict.py does at the BDCI target spacing (3.22 x 1.62 x 1.62 mm), and noisy class
probabilities at the resampled shape stand in for the sliding window's (softmax of Gaussian noise: a
label map with millions of small components, the hard case for the report and the postprocessing). Then
predict.py's steps run one by one, each measured by resetting the process's high-water mark
(``/proc/self/clear_refs``) before it and reading ``VmHWM`` after it: back to the original grid
(``probabilities_to_original``), postprocessing (``--postprocess lcc``: largest component of the
foreground and of each class), the label NIfTI (``save_label``), the report and overlay
(``write_case_outputs``, with the HTML page where the checkout has one). ``added_gb`` is a step's peak above the memory held when it began, i.e. what the
step itself costs on top of the case's image and labels. The last line printed is one JSON object.
"""
import argparse
import inspect
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.preprocess_case import write_kits_case
from src.data.plan import Plan

# preprocessing reads no network topology, but a plan carries one: kits19_bdci's six stages at its patch
BDCI_PLAN = Plan.from_json({
    "labels": {"background": 0, "kidney": 1, "tumor": 2}, "num_classes": 3, "target_spacing": [3.22, 1.62, 1.62],
    "normalization": "ct", "intensity": {"mean": 100.0, "std": 50.0, "p005": -100.0, "p995": 300.0},
    "patch_size": [80, 160, 160], "features": [32, 64, 128, 256, 320, 320], "conv_kernel_sizes": [[3, 3, 3]] * 6,
    "strides": [[1, 1, 1]] + [[2, 2, 2]] * 4 + [[1, 2, 2]]})
GB = 1e9


def status_kb(key: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(key):
                return int(line.split()[1])
    return 0


def measured(steps: list, name: str, work):
    """Run ``work()`` as one step; append its memory and time to ``steps``; return its result."""
    with open("/proc/self/clear_refs", "w") as handle:  # resets VmHWM to the current resident set
        handle.write("5")
    before, start = status_kb("VmRSS:"), time.perf_counter()
    result = work()
    steps.append({"step": name, "held_before_gb": round(before * 1024 / GB, 3),
                  "peak_gb": round(status_kb("VmHWM:") * 1024 / GB, 3),
                  "added_gb": round((status_kb("VmHWM:") - before) * 1024 / GB, 3),
                  "seconds": round(time.perf_counter() - start, 1)})
    return result


def noisy_probabilities(shape, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    probs = rng.standard_normal((3,) + tuple(shape), dtype=np.float32)
    probs[0] += 0.8  # mostly background
    np.exp(probs, out=probs)
    probs /= probs.sum(axis=0)
    return probs


def run(args, work: Path) -> dict:
    from src.data.io import load_image, save_label
    from src.data.preprocess import preprocess_image_for_inference
    from src.infer import case_report
    from src.infer.case_report import write_case_outputs
    from src.infer.geometry import probabilities_to_original
    from src.infer.postprocess import apply_postprocessing, lcc_everything

    # also runs on older checkouts (to measure them): no compact image, postprocessing on a copy
    compact_ct = getattr(case_report, "compact_ct", lambda image: image)
    in_place = {"copy": False} if "copy" in inspect.signature(apply_postprocessing).parameters else {}

    shape, spacing = (args.slices, args.rows, args.rows), (args.slice_mm, 400.0 / args.rows, 400.0 / args.rows)
    case = write_kits_case(work / "raw", shape, spacing)
    steps = []
    image, meta = measured(steps, "read image", lambda: load_image(case.image))
    data, props = measured(steps, "preprocess", lambda: preprocess_image_for_inference(image, meta, BDCI_PLAN))
    image = measured(steps, "compact image", lambda: compact_ct(image))
    probs = noisy_probabilities(data.shape[1:])
    del data
    label = measured(steps, "back to the original grid", lambda: probabilities_to_original(probs, props))
    del probs
    spec = lcc_everything([1, 2]) if args.postprocess == "lcc" else None
    label = measured(steps, f"postprocess {args.postprocess}",
                     lambda: apply_postprocessing(label, spec, meta.spacing, **in_place))
    out = work / "out"
    out.mkdir(exist_ok=True)
    measured(steps, "write label", lambda: save_label(label, meta, out / "case.nii.gz"))
    # the HTML page too where write_case_outputs makes one (as predict.py asks for it)
    page = {"page_path": out / "case.html"} if "page_path" in inspect.signature(write_case_outputs).parameters else {}
    measured(steps, "report and overlay", lambda: write_case_outputs(
        "case", image, label, meta, BDCI_PLAN.labels, out / "case_report.json", out / "case_overlay.png", **page))
    return {"shape": list(shape), "spacing_mm": list(spacing), "voxels": int(np.prod(shape)),
            "resampled": props["shape_after_resample"], "image_dtype_kept": str(image.dtype),
            "postprocess": args.postprocess, "steps": steps,
            "peak_gb": max(step["peak_gb"] for step in steps)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=1000)
    parser.add_argument("--slice_mm", type=float, default=0.5)
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--postprocess", choices=("none", "lcc"), default="none")
    parser.add_argument("--keep", default=None, help="work in this folder and keep it (default: a temporary one)")
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    args = parser.parse_args(argv)
    if args.keep:
        Path(args.keep).mkdir(parents=True, exist_ok=True)
        result = run(args, Path(args.keep))
    else:
        with tempfile.TemporaryDirectory(prefix="original_grid_") as tmp:
            result = run(args, Path(tmp))
    if not args.json:
        for step in result["steps"]:
            print(f"{step['step']:28s} held {step['held_before_gb']:.2f} GB, peak {step['peak_gb']:.2f} GB "
                  f"(+{step['added_gb']:.2f}), {step['seconds']} s", file=sys.stderr)
    print(json.dumps(result))


if __name__ == "__main__":
    main()

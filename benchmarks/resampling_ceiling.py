"""The best KiTS19 Dice any model can score at a target spacing: reference labels resampled to the training
grid and back to the original geometry by the pipeline's own functions, then scored against themselves.

    python -m benchmarks.resampling_ceiling --raw RAW --target_spacing 4.0 3.2 3.2 [--target_spacing ...] [--json]

For each case of RAW (a KiTS19/KiTS21 layout) and each target spacing: ``preprocess_case`` (crop, resample
the label map exactly as for training), the one-hot of the resampled labels as "probabilities",
``probabilities_to_original`` (the inference path back), KiTS19 kidney (kidney + tumour region) and tumour
Dice. A network predicting the resampled labels perfectly scores this; its soft probabilities can do a
little better at boundaries, so the figure is a guide, not a hard bound. Prints mean and minimum per
spacing; the last line is one JSON object with ``--json``.
"""
import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.preprocess_case import our_plan
from src.data.io import ImageMeta, load_label
from src.data.layouts import KITS19_LABELS, find_cases
from src.data.preprocess import preprocess_case
from src.data.preprocessed_case import load_case
from src.errors import UserError, exit_on_user_error
from src.infer.geometry import probabilities_to_original
from src.metrics.kits import kits19_scores

# intensities do not matter here: an identity CT normalization keeps preprocess_case's contract
IDENTITY_INTENSITY = {"mean": 0.0, "std": 1.0, "p005": -1e9, "p995": 1e9}


def case_ceiling(case, target_spacing, scratch: Path) -> dict:
    props = preprocess_case(case, our_plan([float(s) for s in target_spacing], IDENTITY_INTENSITY), scratch)
    seg = np.asarray(load_case(scratch, case.case_id).seg)
    one_hot = np.stack([seg == value for value in KITS19_LABELS.values()]).astype(np.float32)
    restored = probabilities_to_original(one_hot, props)
    reference = load_label(case.label, ImageMeta.from_json(props["image_meta"]))
    return kits19_scores(restored, reference)


def ceilings(raw, spacings) -> dict:
    cases = [case for case in find_cases(raw) if case.label is not None]
    if not cases:
        raise UserError(f"no labelled cases in {raw}")
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        for spacing in spacings:
            scores = [case_ceiling(case, spacing, Path(scratch)) for case in cases]
            kidney = [s["kits19_kidney_dice"] for s in scores]
            tumor = [s["kits19_tumor_dice"] for s in scores]
            results["x".join(f"{s:g}" for s in spacing)] = {
                "cases": len(scores), "kidney_mean": float(np.mean(kidney)), "kidney_min": float(np.min(kidney)),
                "tumor_mean": float(np.mean(tumor)), "tumor_min": float(np.min(tumor))}
    return results


@exit_on_user_error
def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--raw", required=True, help="raw KiTS-layout folder with labels")
    parser.add_argument("--target_spacing", type=float, nargs=3, action="append", required=True,
                        help="mm per axis (slice axis first); repeat for several spacings")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    results = ceilings(args.raw, args.target_spacing)
    for spacing, r in results.items():
        print(f"{spacing} mm: kidney+tumour Dice mean {r['kidney_mean']:.4f} (min {r['kidney_min']:.4f}), "
              f"tumour Dice mean {r['tumor_mean']:.4f} (min {r['tumor_min']:.4f}) over {r['cases']} cases")
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()

"""Gather the demo's outputs into one report folder with a short report.md.

    python -m scripts.make_report --work WORK --report REPORT [--seconds S]

WORK is the demo's working folder (raw/, preprocessed/, train/fold_0/, eval/, predict/).
"""
import argparse
import csv
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
from matplotlib import image as mpimg

import src  # noqa: F401
from src.data.io import ImageMeta, load_image, load_label
from src.errors import UserError, exit_on_user_error
from src.infer.case_report import axial_axis, overlay_slice_index, render_overlay
from src.infer.evaluate import reference_label_paths


def read_case_rows(metrics_csv: Path) -> list:
    with metrics_csv.open() as handle:
        rows = [row for row in csv.DictReader(handle) if row["caseID"] != "average"]
    if not rows:
        raise UserError(f"{metrics_csv} holds no cases")
    return rows


def kits19_composite(row: dict) -> float:
    # On KiTS19 labels the kidney HEC is kidney+tumour and the tumour HEC is the tumour: the KiTS19 pair.
    return (float(row["Dice_kidney"]) + float(row["Dice_tumor"])) / 2


def side_by_side(left_png: bytes, right_png: bytes) -> bytes:
    """One PNG with two PNGs next to each other (the shorter padded with white at the bottom)."""
    left, right = (mpimg.imread(io.BytesIO(png), format="png") for png in (left_png, right_png))
    height = max(left.shape[0], right.shape[0])
    padded = [np.pad(a, ((0, height - a.shape[0]), (0, 0), (0, 0)), constant_values=1.0) for a in (left, right)]
    buffer = io.BytesIO()
    mpimg.imsave(buffer, np.concatenate(padded, axis=1), format="png")
    return buffer.getvalue()


def write_validation_overlay(work: Path, case_id: str, row: dict, target: Path) -> None:
    """Reference (left) and prediction (right) outlines on the same slice of a held-out case."""
    props = json.loads((work / "preprocessed" / f"{case_id}.json").read_text())
    meta = ImageMeta.from_json(props["image_meta"])
    image, _ = load_image(meta.source)
    prediction = load_label(work / "eval" / "predictions" / f"{case_id}.nii.gz", meta)
    labels = json.loads((work / "preprocessed" / "plans.json").read_text())["labels"]
    axis = axial_axis(meta.affine)
    scores = f"kidney Dice {float(row['Dice_kidney']):.3f}  tumour Dice {float(row['Dice_tumor']):.3f}"
    # the reference eval.py scored this case against
    reference = load_label(reference_label_paths({case_id: props})[case_id], meta)
    index = overlay_slice_index(np.where(prediction > 0, prediction, reference), axis, labels)
    target.write_bytes(side_by_side(
        render_overlay(image, reference, meta.spacing, labels, axis, index, f"{case_id} reference  slice {index}"),
        render_overlay(image, prediction, meta.spacing, labels, axis, index, f"prediction  {scores}")))


def shown_path(path: str, work: Path) -> str:
    """``path`` relative to the demo folder (which is renamed once the demo finishes)."""
    relative = os.path.relpath(path, work)
    return path if relative.startswith("..") else relative


def build_report(work: Path, report: Path, seconds=None) -> Path:
    summary = json.loads((work / "eval" / "summary.json").read_text())
    rows = sorted(read_case_rows(work / "eval" / "metrics.csv"), key=kits19_composite)
    report.mkdir(parents=True, exist_ok=True)
    for name in ("summary.json", "metrics.csv"):
        shutil.copy2(work / "eval" / name, report / name)
    shutil.copy2(work / "train" / "fold_0" / "progress.png", report / "training_curve.png")
    shutil.copy2(work / "train" / "fold_0" / "training_log.txt", report / "training_log.txt")
    worst, best = rows[0], rows[-1]
    write_validation_overlay(work, best["caseID"], best, report / "overlay_best.png")
    write_validation_overlay(work, worst["caseID"], worst, report / "overlay_worst.png")
    predictions = sorted((work / "predict").glob("*.nii.gz"))
    for path in predictions + sorted((work / "predict").glob("*_overlay.png")) + sorted(
            (work / "predict").glob("*_report.json")) + sorted((work / "predict").glob("*_report.html")):
        shutil.copy2(path, report / f"predicted_{path.name}")
    # a report predict.py left "incomplete" (a killed run) describes no finished case
    case_reports = [report for report in (json.loads(p.read_text()) for p in sorted((work / "predict").glob(
        "*_report.json"))) if report.get("status", "complete") == "complete"]

    lines = [
        "# Demo report (synthetic KiTS19-format data, CPU)",
        "",
        "Everything here was produced by `make demo` (`scripts/run_demo.sh`) on synthetic phantoms, "
        "not on patient data.",
        "",
        f"- held-out fold 0: {summary['cases']} cases",
        f"- KiTS19 kidney Dice {summary['kits19_kidney_dice']:.4f}, tumour Dice {summary['kits19_tumor_dice']:.4f}, "
        f"composite {summary['kits19_composite']:.4f}",
        f"- KiTS21 mean Dice {summary['kits21_mean_dice']:.4f}, mean Surface Dice {summary['kits21_mean_sd']:.4f}",
    ]
    test_csv = work / "test" / "metrics.csv"
    if test_csv.is_file():
        test_rows = read_case_rows(test_csv)
        shutil.copy2(test_csv, report / "test_metrics.csv")
        kidney, tumour = (float(np.mean([float(r[key]) for r in test_rows])) for key in ("Dice_kidney", "Dice_tumor"))
        lines.append(f"- independent synthetic test set ({len(test_rows)} cases of another seed, the MindIR): "
                     f"KiTS19 kidney Dice {kidney:.4f}, tumour Dice {tumour:.4f} (`test_metrics.csv`)")
    if seconds is not None:
        lines.append(f"- wall time of the pipeline before this report: {int(seconds)} s")
    lines += [
        "",
        "| file | what |",
        "|---|---|",
        "| `summary.json`, `metrics.csv` | scores of the held-out cases (official KiTS21 columns) |",
        "| `training_curve.png`, `training_log.txt` | loss, pseudo-Dice and LR per epoch |",
        f"| `overlay_best.png` | best held-out case, {best['caseID']} (composite {kits19_composite(best):.3f}) |",
        f"| `overlay_worst.png` | worst held-out case, {worst['caseID']} (composite {kits19_composite(worst):.3f}) |",
    ]
    for path in predictions:
        lines.append(f"| `predicted_{path.name}` | label map predicted from the raw case with the exported MindIR |")
    for path in sorted((work / "predict").glob("*_report.html")):
        lines.append(f"| `predicted_{path.name}` | that prediction as one page: volumes per side, largest tumour, "
                     f"three views, model and settings |")
    for case in case_reports:
        volumes = ", ".join(f"{name} {v['total']:.1f} mL (L {v['left']:.1f} / R {v['right']:.1f})"
                            for name, v in case["volumes_ml"].items())
        diameter = case.get("largest_tumor_diameter_mm")
        lines.append("")
        lines.append(f"Prediction of `{shown_path(case['image'], work)}`: {volumes}; largest tumour diameter "
                     + ("none" if diameter is None else f"{diameter:.1f} mm") + ".")
    lines += ["", "Held-out cases (KiTS19 kidney = kidney + tumour region; a case without tumour scores tumour "
              "Dice 1 only if none is predicted):", "", "| case | kidney Dice | tumour Dice | kidney Surface Dice |",
              "|---|---|---|---|"]
    lines += [f"| {row['caseID']} | {float(row['Dice_kidney']):.4f} | {float(row['Dice_tumor']):.4f} | "
              f"{float(row['SD_kidney']):.4f} |" for row in sorted(rows, key=lambda r: r["caseID"])]
    target = report / "report.md"
    tmp = target.with_name("report.md.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(target)
    return target


@exit_on_user_error
def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", required=True)
    parser.add_argument("--report", required=True)
    parser.add_argument("--seconds", type=float, default=None)
    args = parser.parse_args(argv)
    work = Path(args.work)
    for needed in ("eval/summary.json", "eval/metrics.csv", "train/fold_0/progress.png"):
        if not (work / needed).exists():
            raise UserError(f"missing {work / needed}: run the demo steps first")
    print(f"report: {build_report(work, Path(args.report), args.seconds)}")


if __name__ == "__main__":
    main()

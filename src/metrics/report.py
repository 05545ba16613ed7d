"""Scoring folders of predictions and writing ``metrics.csv`` / ``summary.json`` (DESIGN.md formats).

A row is one case: ``{"caseID": str}`` plus the keys of ``kits.case_scores`` (both the KiTS19 and the
KiTS21 numbers). ``metrics.csv`` holds the official KiTS21 columns (8 decimals, like the challenge's
own CSV) and an ``average`` row; ``summary.json`` holds flat means over the cases.
"""
from __future__ import annotations

import concurrent.futures
import csv
import io
import json
import multiprocessing
from pathlib import Path

import numpy as np

from src.data.geometry_checks import geometry_difference
from src.data.io import ImageMeta, load_label, read_geometry
from src.errors import UserError
from src.files import atomic_write_text
from src.metrics.kits import KITS19_KEYS, KITS21_COLUMNS, KITS21_HECS, case_scores

LABEL_SUFFIX = ".nii.gz"
# Inside a KiTS case folder the majority-vote reference of KiTS21 wins over a plain segmentation.
KITS_REFERENCE_NAMES = ("aggregated_MAJ_seg.nii.gz", "segmentation.nii.gz")
METRIC_LABELS = {"kits19": (0, 1, 2), "kits21": (0, 1, 2, 3)}
CSV_HEADER = ("caseID",) + KITS21_COLUMNS
SUMMARY_KEYS = (
    "kits19_kidney_dice", "kits19_tumor_dice", "kits19_composite",
    "kits21_dice_kidney", "kits21_dice_masses", "kits21_dice_tumor",
    "kits21_sd_kidney", "kits21_sd_masses", "kits21_sd_tumor",
    "kits21_mean_dice", "kits21_mean_sd", "cases",
)


# ---------------------------------------------------------------- writing

def _atomic_write_text(path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)


def _column_means(rows: list[dict], keys) -> dict[str, float]:
    if not rows:
        raise ValueError("no cases to average")
    missing = sorted({key for row in rows for key in keys if key not in row})
    if missing:
        raise ValueError(f"rows lack the keys {missing}")
    return {key: float(np.mean([float(row[key]) for row in rows])) for key in keys}


def summarize(rows: list[dict]) -> dict:
    """Flat means over the cases with exactly the ``SUMMARY_KEYS``."""
    means = _column_means(rows, KITS19_KEYS + KITS21_COLUMNS)
    summary = {key: means[key] for key in KITS19_KEYS}
    for hec in KITS21_HECS:
        summary[f"kits21_dice_{hec}"] = means[f"Dice_{hec}"]
    for hec in KITS21_HECS:
        summary[f"kits21_sd_{hec}"] = means[f"SD_{hec}"]
    summary["kits21_mean_dice"] = float(np.mean([means[f"Dice_{hec}"] for hec in KITS21_HECS]))
    summary["kits21_mean_sd"] = float(np.mean([means[f"SD_{hec}"] for hec in KITS21_HECS]))
    summary["cases"] = len(rows)
    return {key: summary[key] for key in SUMMARY_KEYS}


def write_metrics_csv(rows: list[dict], path) -> None:
    """``caseID,Dice_kidney,...,SD_tumor``: one line per case, then the ``average`` line."""
    means = _column_means(rows, KITS21_COLUMNS)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    for row in rows:
        writer.writerow([row["caseID"]] + [f"{float(row[key]):.8f}" for key in KITS21_COLUMNS])
    writer.writerow(["average"] + [f"{means[key]:.8f}" for key in KITS21_COLUMNS])
    _atomic_write_text(path, buffer.getvalue())


def write_summary_json(rows: list[dict], path, extra: dict | None = None) -> dict:
    """Write ``summarize(rows)`` (plus ``extra`` keys, which may not shadow a score) and return it."""
    summary = summarize(rows)
    if extra:
        clashes = sorted(set(extra) & set(summary))
        if clashes:
            raise ValueError(f"extra keys would overwrite scores: {clashes}")
        summary.update(extra)
    _atomic_write_text(path, json.dumps(summary, indent=2) + "\n")
    return summary


# ---------------------------------------------------------------- reading and pairing

def _case_geometry(path: Path, what: str, case_id: str) -> ImageMeta:
    if not path.is_file():
        raise UserError(f"case {case_id}: {what} not found: {path}")
    try:
        return read_geometry(path, what)
    except UserError as err:
        raise UserError(f"case {case_id}: {err}") from None


def _read_labels(path: Path, what: str, case_id: str, meta: ImageMeta, allowed: tuple[int, ...]):
    try:
        labels = load_label(path, like=meta)
    except UserError as err:
        raise UserError(f"case {case_id}: {what}: {err}") from None
    if labels.size and (labels.min() < min(allowed) or labels.max() > max(allowed)):
        unexpected = sorted(set(np.unique(labels).tolist()) - set(allowed))
        raise UserError(f"case {case_id}: {what} {path} holds labels {unexpected}, "
                        f"expected only {list(allowed)}")
    return labels


def score_case(case_id: str, pred_path, ref_path, metric: str) -> dict:
    """Read one prediction/reference pair and return its row (spacing from the reference header).

    Both headers go through ``check_header_geometry`` and the prediction must lie on the reference's
    voxel grid: same shape, spacing, axis directions and origin (``geometry_difference``). A prediction
    stored in another orientation (say flipped, with a matching flipped affine) is refused rather than
    reoriented: predict.py writes the input's header unchanged, so another grid means the prediction was
    made or converted elsewhere, and silently resampling it would score something the user never saw.
    """
    if metric not in METRIC_LABELS:
        raise UserError(f"unknown metric {metric!r}; choose one of {sorted(METRIC_LABELS)}")
    pred_path, ref_path = Path(pred_path), Path(ref_path)
    ref_meta = _case_geometry(ref_path, "reference", case_id)
    pred_meta = _case_geometry(pred_path, "prediction", case_id)
    if pred_meta.shape != ref_meta.shape:
        raise UserError(f"case {case_id}: prediction {pred_path} has shape {pred_meta.shape} but the "
                        f"reference {ref_path} has {ref_meta.shape}")
    difference = geometry_difference(pred_meta.affine, ref_meta.affine, "prediction", "reference")
    if difference:
        raise UserError(f"case {case_id}: prediction {pred_path} does not lie on the voxel grid of the "
                        f"reference {ref_path}: {difference}")
    allowed = METRIC_LABELS[metric]
    ref = _read_labels(ref_path, "reference", case_id, ref_meta, allowed)
    pred = _read_labels(pred_path, "prediction", case_id, ref_meta, allowed)
    return {"caseID": case_id, **case_scores(pred, ref, ref_meta.spacing)}


def _references_in(folder: Path) -> dict[str, Path]:
    references = {}
    for entry in sorted(folder.iterdir()):
        if entry.is_dir():
            found = next((entry / name for name in KITS_REFERENCE_NAMES if (entry / name).is_file()), None)
            if found is not None:
                references[entry.name] = found
        elif entry.name.endswith(LABEL_SUFFIX) and not entry.name.startswith("."):
            references.setdefault(entry.name[: -len(LABEL_SUFFIX)], entry)
    return references


def find_references(ref_dir) -> dict[str, Path]:
    """Case id -> reference file, from KiTS case folders and/or a flat folder of ``<case>.nii.gz``
    (in ``REF_DIR`` itself or, for a clone of the KiTS repository, in ``REF_DIR/data``)."""
    ref_dir = Path(ref_dir)
    if not ref_dir.is_dir():
        raise UserError(f"reference folder not found: {ref_dir}")
    references = _references_in(ref_dir)
    if not references and (ref_dir / "data").is_dir():
        references = _references_in(ref_dir / "data")
    if not references:
        raise UserError(f"no references in {ref_dir}: expected <case>/{KITS_REFERENCE_NAMES[0]}, "
                        f"<case>/{KITS_REFERENCE_NAMES[1]} or <case>{LABEL_SUFFIX}")
    return references


def score_folders(pred_dir, ref_dir, metric: str, workers: int = 2) -> list[dict]:
    """Score ``PRED_DIR/<case>.nii.gz`` against every reference case; rows sorted by case id."""
    if metric not in METRIC_LABELS:
        raise UserError(f"unknown metric {metric!r}; choose one of {sorted(METRIC_LABELS)}")
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise UserError(f"prediction folder not found: {pred_dir}")
    references = find_references(ref_dir)
    pairs = [(case_id, pred_dir / f"{case_id}{LABEL_SUFFIX}", ref) for case_id, ref in references.items()]
    missing = [case_id for case_id, pred, _ in pairs if not pred.is_file()]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise UserError(f"no prediction in {pred_dir} for case {shown} (expected <case>{LABEL_SUFFIX})")
    if workers <= 1 or len(pairs) == 1:
        return [score_case(case_id, pred, ref, metric) for case_id, pred, ref in pairs]
    # Spawned, not forked: the caller may hold MindSpore threads, which forking would copy mid-state.
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(min(workers, len(pairs)), mp_context=context) as pool:
        futures = [pool.submit(score_case, case_id, pred, ref, metric) for case_id, pred, ref in pairs]
        try:
            return [future.result() for future in futures]
        except BaseException:
            for future in futures:
                future.cancel()
            raise

"""KiTS19 and KiTS21 scores of one case (numpy/scipy only).

KiTS19: kidney Dice = Dice(pred > 0, ref > 0), tumor Dice = Dice(pred == 2, ref == 2), composite =
their mean. KiTS21: Dice and Surface Dice on the hierarchical evaluation classes (HECs)
kidney_and_masses {1, 2, 3}, masses {2, 3}, tumor {2}; both masks empty scores 1, exactly one
empty scores 0. On KiTS19 labels (no cyst) masses and tumor coincide.
"""
from __future__ import annotations

import numpy as np

from src.metrics.surface import surface_dice_from_distances, surface_distances

KITS21_HECS: dict[str, tuple[int, ...]] = {
    "kidney": (1, 2, 3),
    "masses": (2, 3),
    "tumor": (2,),
}
# Official per-HEC tolerances (mm) of the KiTS21 challenge, from its inter-rater disagreement.
KITS21_SD_TOLERANCES_MM: dict[str, float] = {
    "kidney": 1.0330772532390826,
    "masses": 1.1328796488598762,
    "tumor": 1.1498198361434828,
}
KITS21_COLUMNS = tuple(f"Dice_{hec}" for hec in KITS21_HECS) + tuple(f"SD_{hec}" for hec in KITS21_HECS)
KITS19_KEYS = ("kits19_kidney_dice", "kits19_tumor_dice", "kits19_composite")


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Volumetric Dice 2|A n B| / (|A| + |B|) of two binary masks; 1.0 when both are empty."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    if a.shape != b.shape:
        raise ValueError(f"masks differ in shape: {a.shape} vs {b.shape}")
    total = int(np.count_nonzero(a)) + int(np.count_nonzero(b))
    if total == 0:
        return 1.0
    return 2.0 * int(np.count_nonzero(a & b)) / total


def surface_dice(a: np.ndarray, b: np.ndarray, spacing, tolerance_mm: float) -> float:
    """Surface Dice at ``tolerance_mm`` (KiTS21 definition); 1.0 when both masks are empty, 0.0
    when exactly one is."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    a_empty, b_empty = not a.any(), not b.any()
    if a_empty and b_empty:
        return 1.0
    if a_empty or b_empty:
        return 0.0
    return surface_dice_from_distances(surface_distances(a, b, spacing), tolerance_mm)


def _labels_bounding_box(pred: np.ndarray, ref: np.ndarray) -> tuple[slice, ...]:
    """Box around every labelled voxel of either map; all scores are unchanged by cropping to it."""
    union = (pred > 0) | (ref > 0)
    box = []
    for axis in range(union.ndim):
        hits = np.flatnonzero(union.any(axis=tuple(other for other in range(union.ndim) if other != axis)))
        box.append(slice(int(hits[0]), int(hits[-1]) + 1) if hits.size else slice(0, 0))
    return tuple(box)


def _check_pair(pred, ref):
    pred, ref = np.asarray(pred), np.asarray(ref)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    return pred, ref


def kits19_scores(pred: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """``kits19_kidney_dice``, ``kits19_tumor_dice`` and ``kits19_composite`` of one case."""
    pred, ref = _check_pair(pred, ref)
    kidney = dice(pred > 0, ref > 0)
    tumor = dice(pred == 2, ref == 2)
    return {"kits19_kidney_dice": kidney, "kits19_tumor_dice": tumor,
            "kits19_composite": (kidney + tumor) / 2.0}


def kits21_scores(pred: np.ndarray, ref: np.ndarray, spacing) -> dict[str, float]:
    """``Dice_<hec>`` and ``SD_<hec>`` for the kidney, masses and tumor HECs of one case."""
    pred, ref = _check_pair(pred, ref)
    if len(spacing) != pred.ndim:
        raise ValueError(f"spacing {tuple(spacing)} does not match a {pred.ndim}-D label map")
    box = _labels_bounding_box(pred, ref)
    pred, ref = pred[box], ref[box]
    scores = {}
    for hec, labels in KITS21_HECS.items():
        pred_mask, ref_mask = np.isin(pred, labels), np.isin(ref, labels)
        scores[f"Dice_{hec}"] = dice(pred_mask, ref_mask)
        scores[f"SD_{hec}"] = surface_dice(pred_mask, ref_mask, spacing, KITS21_SD_TOLERANCES_MM[hec])
    return {column: scores[column] for column in KITS21_COLUMNS}


def case_scores(pred: np.ndarray, ref: np.ndarray, spacing) -> dict[str, float]:
    """Both KiTS19 and KiTS21 numbers of one case: the keys of ``KITS19_KEYS`` and ``KITS21_COLUMNS``."""
    return {**kits19_scores(pred, ref), **kits21_scores(pred, ref, spacing)}

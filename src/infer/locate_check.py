"""The first pass's held-out check: on every validation case of its fold, does the region it finds hold every
labelled voxel?

A first pass that misses part of a kidney on a new scan would cut it off without a word: the full-resolution
network never sees it. So train.py checks the locator on the fold's validation cases right after training it
(``src.train.locator_training``) and stores the result with it (the checkpoint meta's ``locator_check``, the
MindIR sidecar's ``locator.check``). ``locate: auto`` uses the first pass only when ``check_verdict`` finds
nothing against it: every labelled voxel of every held-out case inside the region (``locate_min_coverage``,
default 1.0), checked with the settings the prediction uses (a wider margin only holds more). ``--locate crop``
or ``windows`` use the first pass anyway, with a warning naming what the check found.
"""
from typing import Iterable, Optional, Sequence, Tuple

import numpy as np

from src.infer.locate import LocateSettings, Locator, crop_box, crop_window_count, inside_mask
from src.infer.sliding_window import window_layout

CheckedCase = Tuple[str, np.ndarray, np.ndarray]  # (case id, preprocessed data (C, ...), labels (...))


def settings_json(settings: LocateSettings) -> dict:
    return {"margin_mm": settings.margin_mm, "threshold": settings.threshold, "include": settings.include,
            "max_unsure": settings.max_unsure}


def check_case(locator: Locator, data: np.ndarray, seg: np.ndarray, spacing: Sequence[float],
               patch_size: Sequence[int], step_size: float) -> dict:
    """One case: the share of its labelled voxels (> 0) inside the region, and the full-resolution windows
    ``crop`` would run of the whole volume's; a fallback to the whole volume holds everything."""
    shape = seg.shape
    total = len(window_layout(shape, patch_size, step_size).starts)
    region = locator.region(data, spacing)
    if region.fallback:
        return {"whole_volume": region.reason, "windows": [total, total]}
    labelled = seg > 0
    count = int(np.count_nonzero(labelled))
    inside = int(np.count_nonzero(labelled & inside_mask(shape, region.boxes)))
    run = crop_window_count(crop_box(region.boxes, shape, patch_size), patch_size, step_size)
    return {"covered": 1.0 if count == 0 else inside / count, "missed_voxels": count - inside,
            "windows": [run, total]}


def check_locator(locator: Locator, cases: Iterable[CheckedCase], spacing: Sequence[float],
                  patch_size: Sequence[int], step_size: float) -> dict:
    """The check over ``cases`` (JSON-ready): per case, the worst coverage, fallbacks, windows."""
    per_case = {case_id: check_case(locator, data, seg, spacing, patch_size, step_size)
                for case_id, data, seg in cases}
    covered = {case_id: result.get("covered", 1.0) for case_id, result in per_case.items()}
    worst = min(covered, key=covered.get) if covered else None
    windows = np.array([result["windows"] for result in per_case.values()], dtype=np.int64).reshape(-1, 2)
    return {"cases": len(per_case), "min_covered": covered[worst] if worst else None, "worst_case": worst,
            "whole_volume": sum("whole_volume" in result for result in per_case.values()),
            "windows": [int(n) for n in windows.sum(axis=0)], "settings": settings_json(locator.settings),
            "per_case": per_case}


def check_summary(check: dict) -> str:
    """One line for the training log."""
    if not check["cases"]:
        return "no validation cases to check it on"
    run, total = check["windows"]
    return (f"on {check['cases']} held-out case(s) the region held {check['min_covered']:.2%} of the labelled "
            f"voxels at worst ({check['worst_case']}), {check['whole_volume']} fell back to the whole volume, "
            f"crop would run {run} of {total} windows")


def check_verdict(check: Optional[dict], settings: LocateSettings, min_covered: float) -> Optional[str]:
    """None when the check lets ``locate: auto`` use the first pass; otherwise why not, in a few words."""
    if not check:
        return ("it carries no held-out check (trained by an older version: train.py --resume adds it, then "
                "export.py again for a MindIR)")
    try:
        if not check["cases"]:
            return "its fold had no validation cases to check it on"
        checked = check["settings"]
        now = settings_json(settings)
        if now["margin_mm"] < checked["margin_mm"] or any(now[key] != checked[key] for key in now
                                                          if key != "margin_mm"):
            return f"it was checked with other locate settings ({checked}, now {now})"
        if check["min_covered"] < min_covered:
            return (f"its region held only {check['min_covered']:.2%} of the labelled voxels of held-out case "
                    f"{check['worst_case']} (locate_min_coverage {min_covered:g})")
    except (KeyError, TypeError):  # written by hand or by another program: not a check to rely on
        return "its held-out check is unreadable"
    return None

"""Largest-connected-component postprocessing, decided on cross-validation results as nnU-Net does.

Two steps, in this order: (1) treat all foreground labels as one object and keep only its largest
connected component; (2) per class, keep only that class's largest component. Removed voxels become
background. Components use face connectivity (scipy's default structure), as nnU-Net.

The decision (``decide_postprocessing``) keeps a step only if it raises the cross-validation Dice:
step 1 if the mean over classes of the per-class mean Dice goes up, then (on top of that choice)
step 2 for a class if that class's mean Dice goes up. Dice of a class absent from both prediction
and reference counts as 1 (the KiTS21 convention), so deleting a false positive is credited.
The decision is stored as ``postprocessing.json`` next to the checkpoints; ``cfg.postprocess``
picks: ``none`` (never), ``lcc`` (both steps for every class), ``auto`` (what the file says).
"""
import json
import os
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage

from src.errors import UserError
from src.metrics.kits import dice

POSTPROCESSING_FILE = "postprocessing.json"


def largest_component(mask: np.ndarray) -> np.ndarray:
    """Boolean mask of the largest face-connected component of ``mask`` (empty stays empty)."""
    components, count = ndimage.label(mask)
    if count <= 1:
        return mask.astype(bool, copy=count == 0)
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    return components == int(np.argmax(sizes))


def _keep_largest_inplace(label: np.ndarray, mask: np.ndarray) -> None:
    keep = largest_component(mask)
    label[mask & ~keep] = 0


def apply_postprocessing(label: np.ndarray, spec: Optional[dict]) -> np.ndarray:
    """Apply a postprocessing spec ``{"all_foreground": bool, "per_class": [labels]}``; returns a new
    array (the input itself when the spec does nothing)."""
    if not spec or (not spec.get("all_foreground") and not spec.get("per_class")):
        return label
    out = label.copy()
    if spec.get("all_foreground"):
        _keep_largest_inplace(out, out > 0)
    for value in spec.get("per_class", []):
        _keep_largest_inplace(out, out == int(value))
    return out


def _class_dices(pred: np.ndarray, ref: np.ndarray, labels: Sequence[int]) -> np.ndarray:
    return np.array([dice(pred == c, ref == c) for c in labels])


def _lcc_of_class_dice(pred: np.ndarray, ref: np.ndarray, value: int) -> float:
    mask = pred == value
    return dice(largest_component(mask), ref == value)


def decide_postprocessing(pairs: Iterable[Tuple[np.ndarray, np.ndarray]], labels: Sequence[int]) -> dict:
    """Decide which LCC steps improve Dice over ``(prediction, reference)`` label-array pairs.

    ``pairs`` may be a generator (one case in memory at a time); ``labels`` are the foreground values.
    Returns the spec plus the Dice figures the decision rests on.
    """
    labels = [int(v) for v in labels]
    raw, all_fg, per_class_on_raw, per_class_on_fg = [], [], [], []
    for pred, ref in pairs:
        if pred.shape != ref.shape:
            raise UserError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
        raw.append(_class_dices(pred, ref, labels))
        per_class_on_raw.append([_lcc_of_class_dice(pred, ref, c) for c in labels])
        pred_fg = apply_postprocessing(pred, {"all_foreground": True})
        all_fg.append(_class_dices(pred_fg, ref, labels))
        per_class_on_fg.append([_lcc_of_class_dice(pred_fg, ref, c) for c in labels])
    if not raw:
        raise UserError("no cases to decide postprocessing on")
    raw_mean = np.mean(raw, axis=0)
    fg_mean = np.mean(all_fg, axis=0)
    use_all_fg = bool(fg_mean.mean() > raw_mean.mean())
    base_mean = fg_mean if use_all_fg else raw_mean
    candidate = np.mean(per_class_on_fg if use_all_fg else per_class_on_raw, axis=0)
    per_class = [c for c, before, after in zip(labels, base_mean, candidate) if after > before]
    return {
        "all_foreground": use_all_fg,
        "per_class": per_class,
        "cases": len(raw),
        "dice_raw": {str(c): float(d) for c, d in zip(labels, raw_mean)},
        "dice_all_foreground_lcc": {str(c): float(d) for c, d in zip(labels, fg_mean)},
        "dice_per_class_lcc": {str(c): float(d) for c, d in zip(labels, candidate)},
    }


def lcc_everything(labels: Sequence[int]) -> dict:
    return {"all_foreground": True, "per_class": [int(v) for v in labels]}


def save_postprocessing(spec: dict, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(spec, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def load_postprocessing(path) -> dict:
    path = Path(path)
    try:
        spec = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read postprocessing file {path}: {err}") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("all_foreground"), bool) \
            or not isinstance(spec.get("per_class"), list):
        raise UserError(f"postprocessing file {path} lacks 'all_foreground' (bool) and 'per_class' (list)")
    return spec


def postprocessing_candidates(model_paths: Sequence) -> List[Path]:
    """Where a stored decision may live, most general first: the common parent of several models
    (``OUT/`` for ``OUT/fold_*/checkpoint_best.ckpt``: the cross-validation decision), then each
    model's own folder (one fold's decision)."""
    folders = []
    for path in model_paths:
        folder = Path(path).resolve().parent
        if folder not in folders:
            folders.append(folder)
    candidates = []
    if len(folders) > 1:
        candidates.append(Path(os.path.commonpath([str(f) for f in folders])) / POSTPROCESSING_FILE)
    candidates.extend(folder / POSTPROCESSING_FILE for folder in folders)
    return candidates


def resolve_postprocessing(mode: str, model_paths: Sequence, labels: Sequence[int],
                           exported: Optional[dict] = None) -> Tuple[Optional[dict], str]:
    """The spec to apply for ``cfg.postprocess`` and where it came from.

    ``auto`` uses the cross-validation file of the models' common parent if present, otherwise the
    steps every model's own file agrees on, otherwise ``exported`` (the decision export.py stored with a
    MindIR); without any of them nothing is applied.
    """
    if mode == "none":
        return None, "postprocess=none"
    if mode == "lcc":
        return lcc_everything(labels), "postprocess=lcc"
    if not model_paths:
        return None, "postprocess=auto without model files to look next to: none applied"
    candidates = postprocessing_candidates(model_paths)
    folders = {Path(p).resolve().parent for p in model_paths}
    if len(folders) > 1 and candidates[0].is_file():
        return load_postprocessing(candidates[0]), str(candidates[0])
    own = [c for c in candidates[1 if len(folders) > 1 else 0:] if c.is_file()]
    if len(own) < len(folders):
        if exported:
            return exported, "the decision exported with the model (MindIR sidecar)"
        return None, "postprocess=auto but no postprocessing.json next to every model: none applied"
    specs = [load_postprocessing(path) for path in own]
    agreed = {
        "all_foreground": all(s["all_foreground"] for s in specs),
        "per_class": sorted(set.intersection(*(set(int(c) for c in s["per_class"]) for s in specs))),
    }
    return agreed, ", ".join(str(p) for p in own)


def spec_summary(spec: Optional[dict]) -> str:
    if not spec or (not spec.get("all_foreground") and not spec.get("per_class")):
        return "no postprocessing"
    steps = []
    if spec.get("all_foreground"):
        steps.append("largest foreground component")
    if spec.get("per_class"):
        steps.append("largest component of label(s) " + ", ".join(str(c) for c in spec["per_class"]))
    return "; ".join(steps)


def label_values(labels: Dict[str, int]) -> List[int]:
    """Foreground label values of a plan's ``labels`` mapping, ascending."""
    return sorted(int(v) for v in labels.values() if int(v) > 0)

"""Connected-component postprocessing, decided on cross-validation results as nnU-Net does.

Three steps, in this order: (1) treat all foreground labels as one object and keep only its largest
connected component; (2) per class, keep only that class's largest component; (3) per class, drop
components smaller than a volume floor learnt from the training references (``component_floor_ml``).
Steps 1 and 2 are nnU-Net's and turn removed voxels into background. Step 3 is ours: nnU-Net has no
size rule, but a speck of tumour in a tumour-free kidney costs the KiTS19 tumour Dice of that case its
whole 1, and the largest-component steps never delete a lone speck. Its removed voxels take the label
that surrounds them most (kidney around a tumour speck), so no hole is cut. Components use face
connectivity (scipy's default structure), as nnU-Net.

The decision (``src.infer.postprocess_decision``) keeps a step only if it raises the cross-validation Dice
and lowers no class's mean Dice. It is stored as ``postprocessing.json`` next to the checkpoints;
``cfg.postprocess`` picks: ``none`` (never), ``lcc`` (steps 1 and 2 for every class), ``auto`` (what the
file says).

A decision belongs to the models it was decided for: the file records their sha256 (``models``), and a
reader that names the models it uses (``resolve_postprocessing``, ``load_postprocessing(path, models=...)``)
refuses a decision made for other files (a retrained checkpoint, another fold) or one that records none
(written by an older version), with one line saying how to decide again.
"""
import json
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage

from src.data.io import voxel_volume_ml
from src.errors import UserError
from src.files import atomic_write_json, file_digest
from src.infer.slabs import Components

POSTPROCESSING_FILE = "postprocessing.json"


def largest_component(mask: np.ndarray) -> np.ndarray:
    """Boolean mask of the largest face-connected component of ``mask`` (empty stays empty)."""
    components, count = ndimage.label(mask)
    if count <= 1:
        return mask.astype(bool, copy=count == 0)
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    return components == int(np.argmax(sizes))


def _keep_largest_inplace(label: np.ndarray, test) -> None:
    """Set to background every voxel of ``test(label)`` outside its largest component, slab by slab
    (``src.infer.slabs``: no full-size component map on a 1000-slice case)."""
    components = Components(label, test)
    if components.count <= 1:
        return
    for start, stop, keep, selected in components.masks(components.largest(), every_slab=True):
        label[start:stop][selected & ~keep] = 0


def remove_small_components(label: np.ndarray, value: int, min_voxels: float) -> np.ndarray:
    """``label`` with every component of ``value`` smaller than ``min_voxels`` relabelled to the label
    most common on its face-neighbour shell (background when it has none); the input is not changed."""
    out = label.copy()
    components, count = ndimage.label(label == value)
    if count == 0:
        return out
    sizes = np.bincount(components.ravel())
    boxes = ndimage.find_objects(components)
    for index in range(1, count + 1):
        if sizes[index] >= min_voxels:
            continue
        box = tuple(slice(max(b.start - 1, 0), b.stop + 1) for b in boxes[index - 1])
        blob = components[box] == index
        shell = ndimage.binary_dilation(blob) & ~blob
        around = np.bincount(label[box][shell].astype(np.int64), minlength=value + 1)
        around[value] = 0
        out[box][blob] = int(np.argmax(around)) if around.any() else 0
    return out


def apply_postprocessing(label: np.ndarray, spec: Optional[dict], spacing=None, copy: bool = True) -> np.ndarray:
    """Apply a postprocessing spec ``{"all_foreground": bool, "per_class": [labels],
    "min_component_ml": {label: mL}}`` (the last key optional; it needs the voxel ``spacing`` in mm).
    Returns a new array (the input itself when the spec does nothing); ``copy=False`` changes ``label``
    itself where the largest-component steps remove voxels (predict.py: no second full-size label)."""
    floors = (spec or {}).get("min_component_ml") or {}
    if not spec or (not spec.get("all_foreground") and not spec.get("per_class") and not floors):
        return label
    out = label.copy() if copy else label
    if spec.get("all_foreground"):
        _keep_largest_inplace(out, lambda part: part > 0)
    for value in spec.get("per_class", []):
        _keep_largest_inplace(out, lambda part, value=int(value): part == value)
    if floors:
        if spacing is None:
            raise UserError("a minimum component volume needs the voxel spacing")
        for value, floor_ml in sorted(floors.items()):
            out = remove_small_components(out, int(value), float(floor_ml) / voxel_volume_ml(spacing))
    return out


def lcc_everything(labels: Sequence[int]) -> dict:
    return {"all_foreground": True, "per_class": [int(v) for v in labels]}


def save_postprocessing(spec: dict, path, models: Sequence = ()) -> Path:
    """Store ``spec`` bound to ``models``, the model files (checkpoints, MindIR) it was decided for.

    A decision stored without models binds to nothing: readers that name their models refuse it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    bound = dict(spec, models=[{"file": str(Path(m).resolve()), "digest": file_digest(m)} for m in models])
    atomic_write_json(path, bound)
    return path


def _short(digest: str) -> str:
    return digest[:len("sha256:") + 12]


def check_decided_for(spec: dict, path, models: Sequence) -> None:
    """Refuse the decision ``spec`` (read from ``path``) unless every file of ``models`` is one it was
    decided for (compared by sha256, so a copied checkpoint still matches and a retrained one does not)."""
    again = "rerun `eval.py ... --postprocess auto` to decide it for these models, or pass `--postprocess none`"
    recorded = spec.get("models")
    if not isinstance(recorded, list) or not recorded or not all(
            isinstance(m, dict) and isinstance(m.get("digest"), str) for m in recorded):
        raise UserError(f"postprocessing decision {path} does not record the models it was decided for "
                        f"(an older version wrote it); {again}")
    digests = {m["digest"] for m in recorded}
    for model in models:
        digest = file_digest(model)
        if digest not in digests:
            decided_for = ", ".join(f"{m.get('file')} ({_short(m['digest'])})" for m in recorded)
            raise UserError(f"postprocessing decision {path} was decided for {decided_for}, not for {model} "
                            f"({_short(digest)}); {again}")


def load_postprocessing(path, models: Optional[Sequence] = None) -> dict:
    """The decision stored in ``path``; with ``models`` (the model files it is about to be applied to,
    e.g. ``[ckpt]``), refused unless it was decided for them (``check_decided_for``)."""
    path = Path(path)
    try:
        spec = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read postprocessing file {path}: {err}") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("all_foreground"), bool) \
            or not isinstance(spec.get("per_class"), list):
        raise UserError(f"postprocessing file {path} lacks 'all_foreground' (bool) and 'per_class' (list)")
    floors = spec.get("min_component_ml", {})
    if not isinstance(floors, dict) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in floors.values()):
        raise UserError(f"postprocessing file {path}: 'min_component_ml' must map labels to positive volumes (mL)")
    if models is not None:
        check_decided_for(spec, path, models)
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
    MindIR); without any of them nothing is applied. A file decided for other model files is refused.
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
        return load_postprocessing(candidates[0], models=model_paths), str(candidates[0])
    own = [c for c in candidates[1 if len(folders) > 1 else 0:] if c.is_file()]
    if len(own) < len(folders):
        if exported:
            return exported, "the decision exported with the model (MindIR sidecar)"
        return None, "postprocess=auto but no postprocessing.json next to every model: none applied"
    # each fold's own decision must have been made for the model(s) of that fold
    specs = [load_postprocessing(path, models=[m for m in model_paths if Path(m).resolve().parent == path.parent])
             for path in own]
    # a step every fold kept; for volume floors the smallest one, which deletes least
    floors = [{str(k): float(v) for k, v in s.get("min_component_ml", {}).items()} for s in specs]
    agreed = {
        "all_foreground": all(s["all_foreground"] for s in specs),
        "per_class": sorted(set.intersection(*(set(int(c) for c in s["per_class"]) for s in specs))),
        "min_component_ml": {c: min(f[c] for f in floors) for c in sorted(set.intersection(*map(set, floors)))},
    }
    return agreed, ", ".join(str(p) for p in own)


def spec_summary(spec: Optional[dict]) -> str:
    floors = (spec or {}).get("min_component_ml") or {}
    if not spec or (not spec.get("all_foreground") and not spec.get("per_class") and not floors):
        return "no postprocessing"
    steps = []
    if spec.get("all_foreground"):
        steps.append("largest foreground component")
    if spec.get("per_class"):
        steps.append("largest component of label(s) " + ", ".join(str(c) for c in spec["per_class"]))
    for value, floor_ml in sorted(floors.items()):
        steps.append(f"label {value} components under {float(floor_ml):.2g} mL removed")
    return "; ".join(steps)


def label_values(labels: Dict[str, int]) -> List[int]:
    """Foreground label values of a plan's ``labels`` mapping, ascending."""
    return sorted(int(v) for v in labels.values() if int(v) > 0)

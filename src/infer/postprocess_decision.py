"""Which postprocessing steps to keep (``src.infer.postprocess``'s steps 1-3), decided on cross-validation
results as nnU-Net does.

The decision (``decide_postprocessing``) keeps a step only if it raises the cross-validation Dice and
lowers no class's mean Dice: step 1 if the mean over classes of the per-class mean Dice goes up, then
(on top of the choices before) step 2 and step 3 for a class if that class's mean Dice goes up. Step 1
alone would otherwise trade a whole kidney (the two kidneys are separate components) for a false tumour
far away whenever the tumour's gain outweighs the kidney's loss in the mean. Dice of a class absent from both
prediction and reference counts as 1 (the KiTS21 convention), so deleting a false positive is credited.

Every candidate is scored from voxel counts of each class's components, measured once per case, so no
candidate label map is made and the cases are read once.
"""
from typing import Dict, Iterable, Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage

from src.data.io import voxel_volume_ml
from src.errors import UserError
from src.infer.postprocess import largest_component
from src.infer.slabs import Components


def component_floor_ml(references: Iterable[np.ndarray], spacing, labels: Sequence[int]) -> Dict[str, float]:
    """Per class, half the smallest "main object" of the training references: over the references
    holding the class, the volume (mL, at ``spacing``) of its largest component, minimum over cases,
    halved so that an under-segmented smallest object still survives. Classes never present get none."""
    smallest = {}
    for reference in references:
        for value in labels:
            mask = reference == value
            if mask.any():
                size = float(largest_component(mask).sum())
                smallest[value] = min(smallest.get(value, size), size)
    return {str(v): 0.5 * size * voxel_volume_ml(spacing) for v, size in sorted(smallest.items())}


def _foreground_kept(pred: np.ndarray) -> np.ndarray:
    """Boolean mask of the voxels step 1 keeps: the largest foreground component (all foreground when
    there is at most one), found slab by slab like ``_keep_largest_inplace``."""
    components = Components(pred, lambda part: part > 0)
    if components.count <= 1:
        return pred > 0
    kept = np.zeros(pred.shape, dtype=bool)
    for start, stop, keep, _ in components.masks(components.largest()):
        kept[start:stop] = keep
    return kept


class _ClassComponents:
    """The components of one class in a prediction, measured once for every candidate of the decision.

    Per component (``ndimage.label`` order, i.e. by first voxel in C order, the tie-break of
    ``_keep_largest_inplace``): its size, how many of its voxels the reference gives the class
    (``hits``), whether step 1 keeps it (``kept``: a component of one class lies in one foreground
    component), and for the components under the volume floor the label step 3 gives them (``target``,
    ``remove_small_components``' rule) with the reference's voxels of that label among them (``gains``).
    The target is read on the raw prediction: a component's face neighbours are background or voxels of
    its own foreground component, which step 1 keeps with it and step 2 of its class never touches, so it
    is the label step 3 would read after steps 1 and 2 as well.
    """

    def __init__(self, pred, ref, value: int, kept: np.ndarray, min_voxels: Optional[float]):
        mask = pred == value
        components, count = ndimage.label(mask)
        ids = components[mask]
        self.sizes = np.bincount(ids, minlength=count + 1)[1:]
        self.hits = np.bincount(ids[ref[mask] == value], minlength=count + 1)[1:]
        self.kept = np.bincount(ids[kept[mask]], minlength=count + 1)[1:] > 0
        del ids
        self.target = np.zeros(count, dtype=np.int64)
        self.gains = np.zeros(count, dtype=np.int64)
        self.small = np.zeros(count, dtype=bool) if min_voxels is None else self.sizes < min_voxels
        if self.small.any():
            boxes = ndimage.find_objects(components)
            for index in np.flatnonzero(self.small):
                box = tuple(slice(max(b.start - 1, 0), b.stop + 1) for b in boxes[index])
                blob = components[box] == index + 1
                shell = ndimage.binary_dilation(blob) & ~blob
                around = np.bincount(pred[box][shell].astype(np.int64), minlength=value + 1)
                around[value] = 0
                self.target[index] = int(np.argmax(around)) if around.any() else 0
                self.gains[index] = np.count_nonzero(ref[box][blob] == self.target[index])

    def largest(self, among: np.ndarray) -> np.ndarray:
        """The components step 2 keeps of the ones in ``among``: the largest (first on ties), or all of
        them when there is at most one."""
        if np.count_nonzero(among) <= 1:
            return among
        keep = np.zeros_like(among)
        sizes = np.where(among, self.sizes, -1)
        keep[int(np.argmax(sizes))] = True
        return keep


def _counts_after(counts, index: int, labels: Sequence[int], table: _ClassComponents, removed: np.ndarray,
                  relabel: bool):
    """``counts`` ((predicted voxels, overlap) per class) once the components ``removed`` of class
    ``labels[index]`` become background, or with ``relabel`` the label step 3 gives each of them."""
    predicted, overlap = counts[0].copy(), counts[1].copy()
    predicted[index] -= int(table.sizes[removed].sum())
    overlap[index] -= int(table.hits[removed].sum())
    if relabel:
        for j in np.flatnonzero(removed):
            target = int(table.target[j])
            if target in labels:
                predicted[labels.index(target)] += int(table.sizes[j])
                overlap[labels.index(target)] += int(table.gains[j])
    return predicted, overlap


def _case_scores(pred: np.ndarray, ref: np.ndarray, labels: Sequence[int], floors_ml: Dict[str, float],
                 spacing) -> Dict[str, np.ndarray]:
    """Per-class Dice of every candidate the decision scores for one case: raw, step 1, and each class's
    step 2, step 3 and step 2+3 on top of raw or of step 1.

    No candidate label map is made: each class's components are labelled once (``_ClassComponents``),
    a candidate is a set of components relabelled, and its Dice follows from voxel counts (the same
    integers, so the same figures, as comparing the candidate map with the reference).
    """
    labels = list(labels)
    kept = _foreground_kept(pred)
    tables = {}
    for c in labels:
        floor = floors_ml.get(str(c))
        min_voxels = None if floor is None else floor / voxel_volume_ml(spacing)
        tables[c] = _ClassComponents(pred, ref, c, kept, min_voxels)
    del kept
    reference = np.array([np.count_nonzero(ref == c) for c in labels], dtype=np.int64)

    def dices(counts) -> np.ndarray:
        predicted, overlap = counts
        return np.array([1.0 if p + r == 0 else 2.0 * int(o) / int(p + r)
                         for p, o, r in zip(predicted, overlap, reference)])

    raw = (np.array([t.sizes.sum() for t in tables.values()], dtype=np.int64),
           np.array([t.hits.sum() for t in tables.values()], dtype=np.int64))
    fg = raw
    for i, c in enumerate(labels):
        fg = _counts_after(fg, i, labels, tables[c], ~tables[c].kept, relabel=False)
    scores = {}
    for base, counts in (("raw", raw), ("fg", fg)):
        scores[base] = dices(counts)
        for i, c in enumerate(labels):
            table = tables[c]
            present = table.kept if base == "fg" else np.ones_like(table.kept)
            largest = table.largest(present)
            lcc = _counts_after(counts, i, labels, table, present & ~largest, relabel=False)
            scores[f"{base}+lcc{c}"] = dices(lcc)
            if str(c) in floors_ml:
                scores[f"{base}+floor{c}"] = dices(_counts_after(counts, i, labels, table, present & table.small,
                                                                  relabel=True))
                scores[f"{base}+lcc{c}+floor{c}"] = dices(_counts_after(lcc, i, labels, table,
                                                                        largest & table.small, relabel=True))
    return scores


def _helps(after: np.ndarray, before: np.ndarray, target: Optional[int] = None) -> bool:
    """A step helps when it raises its target Dice (a class's, or the mean over classes) and lowers no
    class's Dice: a kidney deleted to clear a false tumour is a loss whatever the mean says."""
    gain = after[target] > before[target] if target is not None else after.mean() > before.mean()
    return bool(gain and np.all(after >= before))


def decide_postprocessing(cases: Iterable[Tuple[np.ndarray, np.ndarray, Sequence[float]]], labels: Sequence[int],
                          floors_ml: Optional[Dict[str, float]] = None) -> dict:
    """Decide which steps improve Dice over ``(prediction, reference, spacing)`` cases.

    ``cases`` may be a generator (one case in memory at a time); ``labels`` are the foreground values;
    ``floors_ml`` are step 3's candidate volumes per class (``component_floor_ml``), none to skip it.
    Every candidate is scored for every class in one pass, so the cases are read once, and a step is
    kept only when it raises its own Dice without lowering any class's (``_helps``). Returns the spec
    plus the Dice figures the decision rests on.
    """
    labels = [int(v) for v in labels]
    floors_ml = {str(k): float(v) for k, v in (floors_ml or {}).items() if int(k) in labels}
    scores: Dict[str, list] = {}
    count = 0
    for pred, ref, spacing in cases:
        if pred.shape != ref.shape:
            raise UserError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
        count += 1
        for name, dices in _case_scores(pred, ref, labels, floors_ml, spacing).items():
            scores.setdefault(name, []).append(dices)
    if not count:
        raise UserError("no cases to decide postprocessing on")
    mean = {key: np.mean(np.asarray(value, dtype=np.float64), axis=0) for key, value in scores.items()}
    use_all_fg = _helps(mean["fg"], mean["raw"])
    base = "fg" if use_all_fg else "raw"
    per_class = [c for i, c in enumerate(labels) if _helps(mean[f"{base}+lcc{c}"], mean[base], i)]
    # step 3 of a class is judged on top of that class's step-2 choice
    kept_floors, floor_dice = {}, {}
    for i, c in enumerate(labels):
        if str(c) not in floors_ml:
            continue
        before = f"{base}+lcc{c}" if c in per_class else base
        after = mean[f"{before}+floor{c}" if c in per_class else f"{base}+floor{c}"]
        floor_dice[str(c)] = float(after[i])
        if _helps(after, mean[before], i):
            kept_floors[str(c)] = floors_ml[str(c)]
    spec = {
        "all_foreground": use_all_fg,
        "per_class": per_class,
        "min_component_ml": kept_floors,
        "cases": count,
        "rule": "a step is kept when it raises its Dice and lowers no class's Dice",
        "dice_raw": {str(c): float(d) for c, d in zip(labels, mean["raw"])},
        "dice_all_foreground_lcc": {str(c): float(d) for c, d in zip(labels, mean["fg"])},
        "dice_per_class_lcc": {str(c): float(mean[f"{base}+lcc{c}"][i]) for i, c in enumerate(labels)},
        "candidate_min_component_ml": floors_ml,
        "dice_min_component": floor_dice,
    }
    return spec

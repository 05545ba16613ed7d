"""Dataset fingerprint: per-case spacing and shapes, and CT foreground intensity statistics.

Also home of the nonzero crop (the fingerprint records shapes after cropping, as nnU-Net does) and of
the per-case process pool that preprocessing shares.
"""
from __future__ import annotations

import multiprocessing
import sys
import traceback
from typing import Callable, Iterable

import numpy as np
from scipy import ndimage

from src.data.io import load_image, load_label

from src.data.layouts import CaseFiles
from src.errors import UserError

# nnU-Net v2 pools this many foreground samples, spread evenly over the cases.
FOREGROUND_POOL_SIZE = 10_000_000
FOREGROUND_SAMPLE_SEED = 1234
IGNORE_LABEL = -1


# ---------------------------------------------------------------- nonzero crop

def memory_order_axes(volume: np.ndarray) -> tuple[int, ...]:
    """Axes from the slowest to the fastest varying in memory: ``volume.transpose(axes)`` is C-ordered.

    nibabel returns Fortran-ordered arrays; scipy's morphology is several times slower on those.
    """
    return tuple(sorted(range(volume.ndim), key=lambda axis: -abs(volume.strides[axis])))


def nonzero_mask(image: np.ndarray) -> np.ndarray:
    """Voxels that are nonzero in any channel, with enclosed holes filled. image: (C, ...) or (...).

    The mask has the image's axes and memory layout.
    """
    channels = image if image.ndim == 4 else image[None]
    # Hole filling (6-connected, so symmetric under axis permutations) runs on the mask viewed in memory
    # order: on a Fortran-ordered mask scipy takes ~6x longer.
    axes = memory_order_axes(channels[0])
    mask = channels[0].transpose(axes) != 0
    for channel in channels[1:]:
        mask |= channel.transpose(axes) != 0
    return ndimage.binary_fill_holes(mask).transpose(np.argsort(axes))


def bounding_box(mask: np.ndarray) -> list[list[int]]:
    """[[lo, hi), ...] per axis of the True voxels; the whole volume when nothing is set."""
    if not mask.any():
        return [[0, int(s)] for s in mask.shape]
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(np.any(mask, axis=other))
        box.append([int(hits[0]), int(hits[-1]) + 1])
    return box


def crop_to_nonzero(image: np.ndarray, seg: np.ndarray | None = None):
    """Crop (C, ...) image (and seg) to the nonzero box; background seg outside the mask becomes -1.

    Returns (image, seg or None, bbox); the cropped image is a view, the seg a copy in seg's layout.
    """
    mask = nonzero_mask(image)
    bbox = bounding_box(mask)
    slicer = tuple(slice(lo, hi) for lo, hi in bbox)
    image = image[(slice(None),) + slicer]
    if seg is not None:
        seg = seg[slicer].astype(np.int16, copy=True)
        # Elementwise ops on arrays of different memory layouts are far slower (KiTS case: 0.6 s vs 8 ms).
        inside = mask[slicer]
        if memory_order_axes(inside) != memory_order_axes(seg):
            inside = _with_layout_of(inside, seg)
        outside = seg == 0
        outside &= ~inside
        np.copyto(seg, IGNORE_LABEL, where=outside)
    return image, seg, bbox


def _with_layout_of(array: np.ndarray, like: np.ndarray) -> np.ndarray:
    """A copy of ``array`` laid out in memory like ``like`` (same shape)."""
    axes = memory_order_axes(like)
    return np.ascontiguousarray(array.transpose(axes)).transpose(np.argsort(axes))


# ---------------------------------------------------------------- process pool

def _call_safely(job):
    function, case, args = job
    try:
        return case.case_id, function(case, *args), None
    except UserError as err:
        return case.case_id, None, str(err)
    except Exception:  # a bug, not a user mistake: keep the traceback for the final report
        return case.case_id, None, "internal error:\n" + traceback.format_exc()


def map_cases(function: Callable, cases: Iterable[CaseFiles], args: tuple = (), workers: int = 1,
              progress: bool = False, desc: str = "") -> tuple[dict, dict]:
    """Run ``function(case, *args)`` for every case, in ``workers`` processes.

    A failing case does not stop the others. Returns ({case_id: result}, {case_id: error message}).
    """
    cases = list(cases)
    jobs = [(function, case, args) for case in cases]
    results, failures = {}, {}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), desc=desc, unit="case", file=sys.stderr)
    try:
        if workers <= 1 or len(jobs) <= 1:
            outcomes = map(_call_safely, jobs)
            pool = None
        else:
            # spawn: forking a process that already runs MindSpore's thread pools can deadlock.
            pool = multiprocessing.get_context("spawn").Pool(min(workers, len(jobs)))
            outcomes = pool.imap_unordered(_call_safely, jobs)
        try:
            for case_id, result, error in outcomes:
                if error is None:
                    results[case_id] = result
                else:
                    failures[case_id] = error
                    message = error if not error.startswith("internal error") else f"{case_id}: {error}"
                    print(f"error: {message}", file=sys.stderr)
                if bar is not None:
                    bar.update(1)
        finally:
            if pool is not None:
                pool.close()
                pool.join()
    finally:
        if bar is not None:
            bar.close()
    return results, failures


def raise_for_failures(failures: dict, what: str) -> None:
    """UserError listing failed cases; an internal error (a bug) is re-raised as RuntimeError."""
    if not failures:
        return
    bugs = {k: v for k, v in failures.items() if v.startswith("internal error")}
    if bugs:
        case_id, message = next(iter(sorted(bugs.items())))
        raise RuntimeError(f"{what} crashed on {len(bugs)} case(s); first: {case_id}: {message}")
    listing = "; ".join(f"{case_id}: {failures[case_id]}" for case_id in sorted(failures))
    raise UserError(f"{what} failed for {len(failures)} case(s): {listing}")


# ---------------------------------------------------------------- fingerprint

def labels_present(seg: np.ndarray) -> list[int]:
    """Sorted values of a non-negative integer label map (a count per value: np.unique would sort it)."""
    counts = np.bincount(seg.ravel(order="K"))
    return [int(v) for v in np.flatnonzero(counts)]


def analyze_case(case: CaseFiles, samples_per_case: int, label_values=None) -> dict:
    """Spacing, shapes, labels present and a seeded sample of foreground intensities of one case."""
    if case.label is None:
        raise UserError(f"case {case.case_id}: no label file ({case.image}); training data needs labels")
    image, meta = load_image(case.image)
    seg = load_label(case.label, like=meta)
    present = labels_present(seg)
    if label_values is not None:
        unknown = sorted(set(present) - set(int(v) for v in label_values))
        if unknown:
            raise UserError(f"case {case.case_id}: label {case.label} holds values {unknown} that are not "
                            f"dataset labels {sorted(int(v) for v in label_values)}")
    cropped, cropped_seg, _ = crop_to_nonzero(image[None], seg)
    # Voxels in memory (= file) order, the order nnU-Net v2 pools them in (its SimpleITK arrays are
    # C-ordered file order), so the seeded draw below picks the same voxels; indexing nibabel's
    # Fortran-ordered arrays in C order would also be ~15x slower.
    axes = memory_order_axes(cropped_seg)
    foreground = cropped[0].transpose(axes)[cropped_seg.transpose(axes) > 0]
    rng = np.random.RandomState(FOREGROUND_SAMPLE_SEED)
    if foreground.size and samples_per_case > 0:
        samples = rng.choice(foreground, samples_per_case, replace=True).astype(np.float32)
    else:
        samples = np.zeros(0, np.float32)
    return {
        "spacing": [float(s) for s in meta.spacing],
        "shape_before_crop": [int(s) for s in image.shape],
        "shape_after_crop": [int(s) for s in cropped.shape[1:]],
        "labels_present": present,
        "foreground_samples": samples,
    }


def intensity_statistics(pool: np.ndarray) -> dict:
    """Mean/std/percentiles of the (unclipped) foreground intensity pool."""
    pool = np.asarray(pool, dtype=np.float64)
    return {
        "mean": float(pool.mean()),
        "std": float(pool.std()),
        "median": float(np.median(pool)),
        "min": float(pool.min()),
        "max": float(pool.max()),
        "p005": float(np.percentile(pool, 0.5)),
        "p995": float(np.percentile(pool, 99.5)),
    }


def compute_fingerprint(cases: list[CaseFiles], workers: int, pool_size: int = FOREGROUND_POOL_SIZE,
                        progress: bool = False, collect_failures: bool = False, label_values=None) -> dict:
    """Fingerprint of labelled cases.

    Returns {"case_ids", "task_ids", "spacings", "shapes_before_crop", "shapes_after_crop",
    "labels_present", "intensity": {mean, std, median, min, max, p005, p995}, "failed": {id: msg}}.
    A failing case raises UserError unless ``collect_failures``, which fingerprints the others.
    ``label_values``, when given, rejects cases holding other label values.
    """
    if not cases:
        raise UserError("no cases to fingerprint")
    samples_per_case = int(pool_size // len(cases))
    results, failures = map_cases(analyze_case, cases, (samples_per_case, label_values), workers, progress,
                                   "fingerprint")
    if not collect_failures:
        raise_for_failures(failures, "fingerprint")
    ok_cases = [c for c in cases if c.case_id in results]
    if not ok_cases:
        raise_for_failures(failures, "fingerprint")
    per_case = [results[c.case_id] for c in ok_cases]
    pool = np.concatenate([r["foreground_samples"] for r in per_case])
    if pool.size == 0:
        raise UserError("no foreground voxels (label > 0) in any case: cannot compute intensity statistics")
    return {
        "case_ids": [c.case_id for c in ok_cases],
        "task_ids": [c.task_id for c in ok_cases],
        "spacings": [r["spacing"] for r in per_case],
        "shapes_before_crop": [r["shape_before_crop"] for r in per_case],
        "shapes_after_crop": [r["shape_after_crop"] for r in per_case],
        "labels_present": [r["labels_present"] for r in per_case],
        "intensity": intensity_statistics(pool),
        "failed": dict(sorted(failures.items())),
    }

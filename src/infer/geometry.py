"""Network output at the target spacing -> label map in the original image's geometry.

Probabilities are resampled to the cropped original shape (order 1, order 0 along a separate z axis,
``src.data.resample.resample_probabilities``), turned into labels by argmax and pasted into the crop
box of a background volume of the original shape. The argmax runs class by class (one resampled
channel in memory at a time next to the running maximum), so going back to a 512 x 512 x N volume
costs two float32 volumes rather than K of them plus an int64 argmax.
"""
from pathlib import Path
from typing import Optional

import numpy as np

from src.data.io import ImageMeta, save_label
from src.data.resample import needs_separate_z, resample_probabilities


def back_separate_z_axis(case_props: dict) -> Optional[int]:
    """The axis resampled with order 0 on the way back; nnU-Net asks the current (target) spacing
    first, then the original one."""
    return needs_separate_z(case_props["target_spacing"], case_props["original_spacing"])


def argmax_resampled(probs: np.ndarray, new_shape, separate_z_axis: Optional[int]) -> np.ndarray:
    """``argmax`` over classes of ``probs`` (K, ...) resampled to ``new_shape``, as uint8; ties go to
    the lower class as with ``np.argmax``."""
    new_shape = tuple(int(s) for s in new_shape)
    if probs.shape[0] > 255:
        raise ValueError("at most 255 classes fit a uint8 label map")
    if probs.shape[1:] == new_shape:
        return np.argmax(probs, axis=0).astype(np.uint8)
    best = resample_probabilities(probs[0:1], new_shape, separate_z_axis)[0]
    label = np.zeros(new_shape, dtype=np.uint8)
    for k in range(1, probs.shape[0]):
        candidate = resample_probabilities(probs[k:k + 1], new_shape, separate_z_axis)[0]
        better = candidate > best
        label[better] = k
        np.maximum(best, candidate, out=best)
        del candidate, better
    return label


def paste_into_crop_box(cropped: np.ndarray, case_props: dict) -> np.ndarray:
    """A background volume of ``shape_before_crop`` with ``cropped`` written into ``crop_bbox``."""
    full = np.zeros(tuple(int(s) for s in case_props["shape_before_crop"]), dtype=cropped.dtype)
    box = tuple(slice(int(lo), int(hi)) for lo, hi in case_props["crop_bbox"])
    full[box] = cropped
    return full


def probabilities_to_original(probs: np.ndarray, case_props: dict) -> np.ndarray:
    """Label map (uint8) in the original image geometry from probabilities at the target spacing.

    ``case_props`` is a preprocessed case's ``<case>.json`` (or the properties returned by
    ``preprocess_image_for_inference``): ``shape_after_crop``, ``crop_bbox``, ``shape_before_crop``,
    ``original_spacing``, ``target_spacing``.
    """
    expected = tuple(int(s) for s in case_props["shape_after_resample"])
    if probs.shape[1:] != expected:
        raise ValueError(f"probabilities have spatial shape {probs.shape[1:]}, the case was preprocessed "
                         f"to {expected}")
    cropped = argmax_resampled(probs, case_props["shape_after_crop"], back_separate_z_axis(case_props))
    return paste_into_crop_box(cropped, case_props)


def save_prediction(label: np.ndarray, case_props: dict, path) -> Path:
    """Write ``label`` with the shape, affine and header of the case's raw image (atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_label(label, ImageMeta.from_json(case_props["image_meta"]), path)
    return path

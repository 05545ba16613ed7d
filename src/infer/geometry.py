"""Network output at the target spacing -> label map in the original image's geometry.

Probabilities are resampled to the cropped original shape (order 1, order 0 along a separate z axis,
``src.data.resample.resample_probabilities``), turned into labels by argmax and pasted into the crop
box of a background volume of the original shape. All of it runs in slabs of the first axis
(``src.data.resample_slabs``), class by class, straight into the one uint8 label volume: the float
arrays are slab-sized (about SLAB_BYTES each), so going back to a 1000 x 512 x 512 case costs its
labels (one byte per voxel) plus a bounded amount, and the labels equal the whole-volume computation's
voxel for voxel.
"""
from pathlib import Path
from typing import Optional

import numpy as np

from src.data.io import ImageMeta, save_label
from src.data.resample import needs_separate_z
from src.data.resample_slabs import ROWS_PER_BLOCK, ChannelSlabs

# float32 bytes of one slab of one resampled channel (three are alive at a time: best, candidate, and
# the candidate's last intermediate)
SLAB_BYTES = 64 * 2 ** 20


def back_separate_z_axis(case_props: dict) -> Optional[int]:
    """The axis resampled with order 0 on the way back; nnU-Net asks the current (target) spacing
    first, then the original one."""
    return needs_separate_z(case_props["target_spacing"], case_props["original_spacing"])


def slab_rows(shape, rows: Optional[int] = None) -> int:
    """Rows of the first axis per slab: ``rows`` if given, else what fits SLAB_BYTES; always a multiple of
    ROWS_PER_BLOCK (the resampling's row blocks must not be cut)."""
    if rows is None:
        plane = max(1, int(np.prod([int(s) for s in shape[1:]])))
        rows = max(1, SLAB_BYTES // (4 * plane))
    if int(rows) < 1:
        raise ValueError(f"slab rows must be positive, got {rows}")
    return max(ROWS_PER_BLOCK, -(-int(rows) // ROWS_PER_BLOCK) * ROWS_PER_BLOCK)


def argmax_resampled(probs: np.ndarray, new_shape, separate_z_axis: Optional[int], out: Optional[np.ndarray] = None,
                     rows: Optional[int] = None) -> np.ndarray:
    """``argmax`` over classes of ``probs`` (K, ...) resampled to ``new_shape``, as uint8; ties go to
    the lower class as with ``np.argmax``. Written into ``out`` (uint8 of ``new_shape``, e.g. a view of
    the crop box) when given; ``rows`` per slab (see ``slab_rows``)."""
    new_shape = tuple(int(s) for s in new_shape)
    if probs.shape[0] > 255:
        raise ValueError("at most 255 classes fit a uint8 label map")
    label = np.zeros(new_shape, dtype=np.uint8) if out is None else out
    if label.shape != new_shape or label.dtype != np.uint8:
        raise ValueError(f"out must be uint8 of shape {new_shape}, got {label.dtype} {label.shape}")
    step = slab_rows(new_shape, rows)
    if probs.shape[1:] == new_shape:
        for start in range(0, new_shape[0], step):
            label[start:start + step] = np.argmax(probs[:, start:start + step], axis=0)
        return label
    channels = [ChannelSlabs(probs[k], new_shape, separate_z_axis) for k in range(probs.shape[0])]
    for start in range(0, new_shape[0], step):
        stop = min(start + step, new_shape[0])
        slab = label[start:stop]
        slab[...] = 0
        best = channels[0].rows(start, stop)
        for k in range(1, len(channels)):
            candidate = channels[k].rows(start, stop)
            slab[candidate > best] = k
            np.maximum(best, candidate, out=best)
            del candidate
    return label


def paste_into_crop_box(cropped: np.ndarray, case_props: dict) -> np.ndarray:
    """A background volume of ``shape_before_crop`` with ``cropped`` written into ``crop_bbox``."""
    full = np.zeros(tuple(int(s) for s in case_props["shape_before_crop"]), dtype=cropped.dtype)
    box = tuple(slice(int(lo), int(hi)) for lo, hi in case_props["crop_bbox"])
    full[box] = cropped
    return full


def probabilities_to_original(probs: np.ndarray, case_props: dict, rows: Optional[int] = None) -> np.ndarray:
    """Label map (uint8) in the original image geometry from probabilities at the target spacing.

    ``case_props`` is a preprocessed case's ``<case>.json`` (or the properties returned by
    ``preprocess_image_for_inference``): ``shape_after_crop``, ``crop_bbox``, ``shape_before_crop``,
    ``original_spacing``, ``target_spacing``. ``rows``: first-axis rows per slab (``slab_rows``).
    """
    expected = tuple(int(s) for s in case_props["shape_after_resample"])
    if probs.shape[1:] != expected:
        raise ValueError(f"probabilities have spatial shape {probs.shape[1:]}, the case was preprocessed "
                         f"to {expected}")
    full = np.zeros(tuple(int(s) for s in case_props["shape_before_crop"]), dtype=np.uint8)
    box = tuple(slice(int(lo), int(hi)) for lo, hi in case_props["crop_bbox"])
    argmax_resampled(probs, case_props["shape_after_crop"], back_separate_z_axis(case_props), out=full[box],
                     rows=rows)
    return full


def save_prediction(label: np.ndarray, case_props: dict, path) -> Path:
    """Write ``label`` with the shape, affine and header of the case's raw image (atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_label(label, ImageMeta.from_json(case_props["image_meta"]), path)
    return path

"""Where training patches come from: nnU-Net's patch-box rule, foreground oversampling, padded crops.

A patch box may reach beyond the volume; the part outside is padded with data 0 and seg -1 (ignored by
the loss, reset to 0 by the augmentation). Foreground-forced boxes are centred on a random voxel of a
random present foreground class; the others are uniform over the positions that keep the patch inside
the volume (or centre it, with padding, when the volume is smaller than the patch).

Cases are read through ``src.data.preprocessed_case.load_case`` (memory-mapped: a worker reads only the
voxels of its patch).
"""
from __future__ import annotations

import numpy as np


PAD_DATA = 0.0
PAD_SEG = -1


def oversample_mask(batch_size: int, fraction: float) -> np.ndarray:
    """Which batch items must contain foreground: the last round(fraction * batch_size) (half rounds up)."""
    forced = int(np.floor(fraction * batch_size + 0.5))
    forced = min(max(forced, 0), batch_size)
    mask = np.zeros(batch_size, dtype=bool)
    mask[batch_size - forced:] = True
    return mask


def present_foreground_classes(fg_locations: dict) -> list:
    return sorted(label for label, coords in fg_locations.items() if label > 0 and len(coords) > 0)


def sample_patch_bbox(shape, patch_size, force_fg: bool, fg_locations: dict, rng: np.random.Generator) -> list:
    """Return [(lo, hi)] per axis, hi - lo = patch_size; lo may be negative and hi may exceed shape.

    ``fg_locations`` maps label -> (N, 3) voxel coordinates. Without a present foreground class a forced
    patch falls back to a random position, as nnU-Net does.
    """
    shape = np.asarray(shape, dtype=np.int64)
    patch = np.asarray(patch_size, dtype=np.int64)
    need_to_pad = np.maximum(patch - shape, 0)
    lower = -(need_to_pad // 2) - need_to_pad % 2
    upper = shape + need_to_pad // 2 + need_to_pad % 2 - patch
    classes = present_foreground_classes(fg_locations) if force_fg else []
    if classes:
        label = classes[rng.integers(len(classes))]
        coords = fg_locations[label]
        voxel = np.asarray(coords[rng.integers(len(coords))], dtype=np.int64)
        # Clamped at the lower end only: near the upper border the patch reaches out and is padded (nnU-Net).
        lo = np.maximum(lower, voxel - patch // 2)
    else:
        lo = np.array([rng.integers(lower[d], upper[d] + 1) for d in range(3)], dtype=np.int64)
    return [(int(lo[d]), int(lo[d] + patch[d])) for d in range(3)]


def crop_with_padding(array: np.ndarray, bbox, pad_value) -> np.ndarray:
    """Copy ``array[..., lo:hi, lo:hi, lo:hi]`` (bbox over the last three axes), padding outside the array."""
    spatial = array.shape[-3:]
    out_shape = array.shape[:-3] + tuple(hi - lo for lo, hi in bbox)
    src, dst = [], []
    for (lo, hi), size in zip(bbox, spatial):
        a, b = max(lo, 0), min(hi, size)
        if a >= b:
            return np.full(out_shape, pad_value, dtype=array.dtype)
        src.append(slice(a, b))
        dst.append(slice(a - lo, b - lo))
    inside = array[(Ellipsis, *src)]
    if inside.shape == out_shape:
        return np.array(inside, copy=True)
    out = np.full(out_shape, pad_value, dtype=array.dtype)
    out[(Ellipsis, *dst)] = inside
    return out


def centred_bbox(bbox, shape) -> list:
    """A box of ``shape`` with the same centre as ``bbox`` (each size difference must be even)."""
    box = []
    for (lo, hi), size in zip(bbox, shape):
        grow = size - (hi - lo)
        if grow % 2:
            raise ValueError(f"cannot centre a box of size {size} on one of size {hi - lo}")
        box.append((lo - grow // 2, hi + grow // 2))
    return box

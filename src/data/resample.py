"""Resampling of images, label maps and probabilities onto a new voxel grid, with nnU-Net v2's semantics.

Geometry follows nnU-Net v2 (scikit-image ``resize`` with ``mode='edge'``, no anti-aliasing, output
clipped to the input's range): output voxel ``j`` of an axis samples input coordinate
``(j + 0.5) * n_in / n_out - 0.5``, out-of-range coordinates take the edge value, order 0 rounds half up.
When the spacing is anisotropic the in-plane axes are resampled slice by slice and the separate axis
with order 0, which only ever picks whole slices.

Speed comes from separability rather than a different method. A grid resample is a tensor product of
1D operators, so each axis is a few matrix products (BLAS, multi-threaded) with an ``(n_out, n_in)``
matrix cut into banded blocks. For order 3 that matrix already contains scipy's cubic B-spline
prefilter (edge padding of 12 voxels, as ``scipy.ndimage.zoom`` does for ``mode='nearest'``), so no
per-voxel spline evaluation is needed. Work happens in the axis order of the array's memory layout
(nibabel's arrays are Fortran-ordered), and order 0 along the separate axis means whole slices are
picked, before the in-plane work when that is cheap.
Label maps are not resampled label by label over the whole volume: a voxel whose interpolation taps
all carry one label keeps it, and only the remaining boundary voxels are resolved by thresholding each
label's interpolated indicator at 0.5 in ascending label order (later labels overwrite, voxels where no
label reaches 0.5 become 0), exactly as nnU-Net v2's threshold rule.
"""
from __future__ import annotations

import functools
import itertools

import numpy as np
from scipy.ndimage import spline_filter1d

# nnU-Net's one anisotropy ratio, for spacings (separate-z resampling here, the planned target spacing) and
# for patch shapes (augmentation in-plane only)
ANISOTROPY_THRESHOLD = 3.0
# scipy.ndimage.zoom pads this many edge voxels before the spline prefilter for mode='nearest'.
_SPLINE_EDGE_PAD = 12
_SUPPORTED_ORDERS = (0, 1, 3)
# Output rows per matrix block: small enough to skip most zero columns, large enough for efficient BLAS.
_ROWS_PER_BLOCK = 16


# ---------------------------------------------------------------- planning

def compute_new_shape(shape, spacing, target_spacing) -> tuple[int, int, int]:
    """Voxel counts after resampling ``shape`` from ``spacing`` to ``target_spacing`` (Python rounding),
    at least 1 per axis: an axis thinner than half a target voxel (a 1-voxel image, 0.01 mm spacing)
    becomes one voxel, the edge value of its interpolation, instead of an empty array."""
    if not len(shape) == len(spacing) == len(target_spacing):
        raise ValueError(f"shape {shape}, spacing {spacing} and target {target_spacing} differ in length")
    # Same float expression as nnU-Net (spacing / target * size) so half-way cases round identically.
    return tuple(max(1, int(round(float(s) / float(t) * int(n)))) for n, s, t in zip(shape, spacing, target_spacing))


def _axis_by_axis_peak_voxels(shape_in, shape_out) -> int:
    """Voxels of the two arrays alive together at the worst step of ``_resample_axes`` (shrinking first)."""
    current = [int(n) for n in shape_in]
    changing = sorted((a for a in range(3) if current[a] != int(shape_out[a])),
                      key=lambda a: int(shape_out[a]) / current[a])
    peak = int(np.prod(current))
    for axis in changing:
        following = list(current)
        following[axis] = int(shape_out[axis])
        peak = max(peak, int(np.prod(current)) + int(np.prod(following)))
        current = following
    return peak


# Bytes per output voxel of a label map on the way (int8 result, min/max int8 arrays of two axis steps,
# the mixed-voxel mask): a generous bound, boundary voxels are a small fraction.
_SEG_BYTES_PER_VOXEL = 12


def estimate_resampling_bytes(shape_in, shape_out, channels: int = 1, with_seg: bool = False) -> int:
    """Peak memory of resampling a float32 (C, *shape_in) image (and its label map) to ``shape_out``:
    the input and output images, one channel's two largest intermediates, and the label map's arrays."""
    voxels_in, voxels_out = int(np.prod([int(n) for n in shape_in])), int(np.prod([int(n) for n in shape_out]))
    image = 4 * (channels * (voxels_in + voxels_out) + _axis_by_axis_peak_voxels(shape_in, shape_out))
    seg = (voxels_in * 2 + voxels_out * _SEG_BYTES_PER_VOXEL) if with_seg else 0
    return image + seg


def _single_lowres_axis(spacing) -> int | None:
    spacing = np.asarray(spacing, dtype=np.float64)
    axes = np.flatnonzero(spacing.max() / spacing == 1)
    # Two or three axes sharing the largest spacing (e.g. 0.24 x 1.25 x 1.25) have no single slice axis.
    return int(axes[0]) if len(axes) == 1 else None


def _is_anisotropic(spacing, threshold: float) -> bool:
    spacing = np.asarray(spacing, dtype=np.float64)
    return bool(spacing.max() / spacing.min() > threshold)


def needs_separate_z(spacing, target_spacing, threshold: float = ANISOTROPY_THRESHOLD) -> int | None:
    """The axis to resample separately with order 0, or None.

    The current spacing decides first (its coarsest axis); only when it is not anisotropic does the
    target spacing get a say. A tie for the coarsest axis means no separate axis at all.
    """
    for candidate in (spacing, target_spacing):
        if _is_anisotropic(candidate, threshold):
            return _single_lowres_axis(candidate)
    return None


# ---------------------------------------------------------------- 1D operators

def _source_coordinates(n_in: int, n_out: int) -> np.ndarray:
    return (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5


def _nearest_indices(n_in: int, n_out: int) -> np.ndarray:
    return np.clip(np.floor(_source_coordinates(n_in, n_out) + 0.5), 0, n_in - 1).astype(np.intp)


def _linear_taps(n_in: int, n_out: int):
    """(lower index, upper index, lower weight, upper weight) per output voxel.

    As scipy does it: weights from the unclamped coordinate (the upper one as 1 - lower), indices
    clamped to the edge. The float rounding of that recipe decides exact label ties, so it is kept.
    """
    coords = _source_coordinates(n_in, n_out)
    lower = np.floor(coords)
    lower_weight = 1.0 - (coords - lower)
    upper_weight = 1.0 - lower_weight
    lower = lower.astype(np.intp)
    return np.clip(lower, 0, n_in - 1), np.clip(lower + 1, 0, n_in - 1), lower_weight, upper_weight


def _cubic_bspline_weights(frac: np.ndarray) -> np.ndarray:
    """Weights of the 4 taps floor(x)-1 .. floor(x)+2 for fractional parts ``frac``, shape (n, 4)."""
    rest = 1.0 - frac
    return np.stack([
        rest ** 3 / 6.0,
        (3.0 * frac ** 3 - 6.0 * frac ** 2 + 4.0) / 6.0,
        (3.0 * rest ** 3 - 6.0 * rest ** 2 + 4.0) / 6.0,
        frac ** 3 / 6.0,
    ], axis=1)


@functools.lru_cache(maxsize=64)
def _interpolation_matrix(n_in: int, n_out: int, order: int) -> np.ndarray:
    """The (n_out, n_in) float32 matrix that resamples one line of ``n_in`` voxels to ``n_out``."""
    rows = np.arange(n_out)
    matrix = np.zeros((n_out, n_in), dtype=np.float64)
    if order == 0:
        matrix[rows, _nearest_indices(n_in, n_out)] = 1.0
    elif order == 1:
        lower, upper, lower_weight, upper_weight = _linear_taps(n_in, n_out)
        np.add.at(matrix, (rows, lower), lower_weight)
        np.add.at(matrix, (rows, upper), upper_weight)
    elif order == 3:
        # Prefiltering the edge-padded identity gives the spline coefficients of every unit input line,
        # so evaluating the B-spline on them yields the whole linear operator in one go.
        pad = _SPLINE_EDGE_PAD
        padded_identity = np.pad(np.eye(n_in), ((pad, pad), (0, 0)), mode="edge")
        coefficients = spline_filter1d(padded_identity, order=3, axis=0, mode="mirror", output=np.float64)
        # Not clamped: beyond the edge the spline of the edge-padded line is evaluated, as scipy does.
        coords = _source_coordinates(n_in, n_out) + pad
        first_tap = np.floor(coords).astype(np.intp) - 1
        weights = _cubic_bspline_weights(coords - np.floor(coords))
        for tap in range(4):
            matrix += weights[:, tap, None] * coefficients[first_tap + tap]
    else:
        raise ValueError(f"interpolation order {order} is not supported (use one of {_SUPPORTED_ORDERS})")
    matrix = matrix.astype(np.float32)
    matrix.flags.writeable = False
    return matrix


@functools.lru_cache(maxsize=64)
def _row_blocks(n_in: int, n_out: int, order: int) -> tuple:
    """The interpolation matrix cut into blocks of consecutive output rows, each with the input column
    range it reads: ``((row_start, row_stop, col_start, col_stop, block), ...)``.

    The cubic operator is dense only in principle (the prefilter's influence decays as 0.27^k), so
    entries below 1e-9 are dropped; blocks then read ~70 of 512 columns and the products shrink ~7x.
    """
    matrix = _interpolation_matrix(n_in, n_out, order)
    significant = np.abs(matrix) > 1e-9
    blocks = []
    for start in range(0, n_out, _ROWS_PER_BLOCK):
        stop = min(start + _ROWS_PER_BLOCK, n_out)
        columns = np.flatnonzero(significant[start:stop].any(axis=0))
        first, last = int(columns[0]), int(columns[-1]) + 1
        blocks.append((start, stop, first, last, np.ascontiguousarray(matrix[start:stop, first:last])))
    return tuple(blocks)


def _apply_along_axis(volume: np.ndarray, axis: int, n_out: int, order: int) -> np.ndarray:
    """Resample every line of a C-contiguous float32 3D ``volume`` along ``axis`` to ``n_out`` voxels."""
    shape = list(volume.shape)
    n_in = shape[axis]
    shape[axis] = n_out
    out = np.empty(shape, dtype=np.float32)
    for start, stop, first, last, block in _row_blocks(n_in, n_out, order):
        if axis == 0:
            lines = volume[first:last].reshape(last - first, -1)
            np.matmul(block, lines, out=out[start:stop].reshape(stop - start, -1))
        elif axis == 1:
            np.matmul(block, volume[:, first:last], out=out[:, start:stop])
        else:
            np.matmul(volume[:, :, first:last], block.T, out=out[:, :, start:stop])
    return out


def _resample_axes(volume: np.ndarray, new_shape, axes, order: int) -> np.ndarray:
    """Resample ``volume`` along ``axes`` to ``new_shape`` into a new C-ordered float32 array; shrinking
    axes go first to keep the work small."""
    changing = [a for a in axes if volume.shape[a] != new_shape[a]]
    changing.sort(key=lambda a: new_shape[a] / volume.shape[a])
    if not changing:
        return np.array(volume, dtype=np.float32, order="C")
    for axis in changing:
        volume = np.ascontiguousarray(volume, dtype=np.float32)
        volume = _apply_along_axis(volume, axis, int(new_shape[axis]), order)
    return volume


def _c_order_view(volume: np.ndarray):
    """(C-contiguous view or copy of ``volume`` with its axes permuted, the permutation).

    nibabel returns Fortran-ordered arrays; working in the axis order of the memory layout keeps every
    slice pick and matrix product on contiguous memory instead of transposing 80 MB up front.
    """
    perm = tuple(int(a) for a in np.argsort([-abs(s) for s in volume.strides], kind="stable"))
    view = volume.transpose(perm)
    return (view if view.flags.c_contiguous else np.ascontiguousarray(view)), perm


def _slices_to_pick(n_in: int, n_out: int, axis: int):
    """Nearest input slices along the separate ``axis`` and whether to pick them before the in-plane work
    (always on the outermost axis, where picking is cheap; elsewhere only when it saves most slices)."""
    picked = _nearest_indices(n_in, n_out)
    return picked, axis == 0 or len(np.unique(picked)) < n_in / 2


# ---------------------------------------------------------------- checks

def _check_new_shape(new_shape) -> tuple[int, int, int]:
    new_shape = tuple(int(n) for n in new_shape)
    if len(new_shape) != 3 or min(new_shape) < 1:
        raise ValueError(f"new_shape must be 3 positive sizes, got {new_shape}")
    return new_shape


def _check_axis(separate_z_axis) -> int | None:
    if separate_z_axis is None:
        return None
    if int(separate_z_axis) not in (0, 1, 2):
        raise ValueError(f"separate_z_axis must be None, 0, 1 or 2, got {separate_z_axis}")
    return int(separate_z_axis)


def _check_spacing(spacing) -> None:
    values = np.asarray(spacing, dtype=np.float64)
    if values.shape != (3,) or not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise ValueError(f"spacing must be 3 positive finite numbers, got {spacing}")


# ---------------------------------------------------------------- images and probabilities

def _resample_volume(volume: np.ndarray, new_shape, order: int, separate_z_axis: int | None) -> np.ndarray:
    """One channel; output clipped to the input range, per slice when the z axis is separate (as skimage)."""
    volume, perm = _c_order_view(volume)
    new_shape = tuple(new_shape[a] for a in perm)
    if separate_z_axis is None:
        result = _resample_axes(volume, new_shape, (0, 1, 2), order)
        np.clip(result, volume.min(), volume.max(), out=result)
    else:
        result = _resample_slices(volume, new_shape, order, perm.index(separate_z_axis))
    return result.transpose(np.argsort(perm))


def _per_slice_range(volume: np.ndarray, in_plane) -> tuple:
    """Per-slice (min, max), broadcastable. numpy reduces leading axes of a C array jointly ~4x slower than
    one axis at a time, so those go one by one."""
    if in_plane == (1, 2):
        return volume.min(axis=in_plane, keepdims=True), volume.max(axis=in_plane, keepdims=True)
    first, second = in_plane
    return (volume.min(axis=first, keepdims=True).min(axis=second, keepdims=True),
            volume.max(axis=first, keepdims=True).max(axis=second, keepdims=True))


def _resample_slices(volume: np.ndarray, new_shape, order: int, axis: int) -> np.ndarray:
    picked, pick_first = _slices_to_pick(volume.shape[axis], new_shape[axis], axis)
    if pick_first:
        needed, picked = np.unique(picked, return_inverse=True)
        volume = np.take(volume, needed, axis=axis)
    in_plane = tuple(a for a in range(3) if a != axis)
    plane_shape = tuple(volume.shape[a] if a == axis else new_shape[a] for a in range(3))
    result = _resample_axes(volume, plane_shape, in_plane, order)
    np.clip(result, *_per_slice_range(volume, in_plane), out=result)
    if not np.array_equal(picked, np.arange(volume.shape[axis])):
        result = np.take(result, picked, axis=axis)
    return result


def _resample_channels(data, new_shape, order: int, separate_z_axis, what: str) -> np.ndarray:
    data = np.asarray(data)
    if data.ndim != 4:
        raise ValueError(f"{what} must be (C, d0, d1, d2), got shape {data.shape}")
    if order not in _SUPPORTED_ORDERS:
        raise ValueError(f"interpolation order {order} is not supported (use one of {_SUPPORTED_ORDERS})")
    new_shape = _check_new_shape(new_shape)
    separate_z_axis = _check_axis(separate_z_axis)
    if data.shape[1:] == new_shape:
        return data.astype(np.float32, copy=True)
    out = np.empty((data.shape[0],) + new_shape, dtype=np.float32)
    for channel in range(data.shape[0]):
        out[channel] = _resample_volume(data[channel], new_shape, order, separate_z_axis)
    return out


def resample_image(data, spacing, new_shape, order: int = 3, separate_z_axis: int | None = None) -> np.ndarray:
    """Resample a (C, d0, d1, d2) image to ``new_shape`` (spline ``order`` 0, 1 or 3; order 0 along the
    separate axis). ``spacing`` is the current spacing, checked for sanity; the geometry is the shapes'."""
    _check_spacing(spacing)
    return _resample_channels(data, new_shape, order, separate_z_axis, "image")


def resample_probabilities(probs, new_shape, separate_z_axis: int | None = None) -> np.ndarray:
    """Resample (C, d0, d1, d2) class probabilities or logits linearly (order 0 along the separate axis);
    linear weights sum to one, so probabilities stay a partition of unity."""
    return _resample_channels(probs, new_shape, 1, separate_z_axis, "probabilities")


# ---------------------------------------------------------------- label maps

def _threshold_resample(labels: np.ndarray, new_shape, axes) -> np.ndarray:
    """Per-label linear interpolation + 0.5 threshold along ``axes`` (ascending labels, default 0)."""
    taps = {a: _linear_taps(labels.shape[a], new_shape[a]) for a in axes if labels.shape[a] != new_shape[a]}
    lowest, highest = labels, labels
    for axis, (lower, upper, _, _) in taps.items():
        lowest = np.minimum(np.take(lowest, lower, axis=axis), np.take(lowest, upper, axis=axis))
        highest = np.maximum(np.take(highest, lower, axis=axis), np.take(highest, upper, axis=axis))
    out = lowest.astype(np.int8)
    mixed = np.nonzero(lowest != highest)
    if len(mixed[0]) == 0:
        return out
    # Gather every tap of each mixed voxel with the product of its per-axis weights (axis order, like
    # scipy), then sum the taps in lexicographic order so exact ties (0.5) come out as scipy's do.
    tap_labels, tap_weights = [], []
    for choice in itertools.product((0, 1), repeat=len(taps)):
        source = list(mixed)
        weight = np.ones(len(mixed[0]), dtype=np.float64)
        for (axis, (lower, upper, lower_weight, upper_weight)), take_upper in zip(taps.items(), choice):
            out_index = mixed[axis]
            source[axis] = (upper if take_upper else lower)[out_index]
            weight = weight * (upper_weight if take_upper else lower_weight)[out_index]
        tap_labels.append(labels[tuple(source)])
        tap_weights.append(weight)
    decided = np.zeros(len(mixed[0]), dtype=np.int8)
    for label in np.unique(np.stack(tap_labels)):
        indicator = np.zeros(len(mixed[0]), dtype=np.float64)
        for tap_label, tap_weight in zip(tap_labels, tap_weights):
            indicator += np.where(tap_label == label, tap_weight, 0.0)
        decided[indicator >= 0.5] = label
    out[mixed] = decided
    return out


def resample_segmentation(seg, spacing, new_shape, separate_z_axis: int | None = None) -> np.ndarray:
    """Resample a (d0, d1, d2) integer label map (labels -1..127, -1 = ignore) to ``new_shape`` as int8.

    Every label, -1 included, is an indicator resampled linearly and thresholded at 0.5 in ascending
    label order; along the separate axis whole slices are picked (order 0).
    """
    seg = np.asarray(seg)
    if seg.ndim != 3 or not np.issubdtype(seg.dtype, np.integer):
        raise ValueError(f"segmentation must be a 3D integer array, got {seg.dtype} {seg.shape}")
    _check_spacing(spacing)
    new_shape = _check_new_shape(new_shape)
    separate_z_axis = _check_axis(separate_z_axis)
    if seg.size and (seg.min() < -1 or seg.max() > 127):
        raise ValueError(f"labels must lie in -1..127, got {seg.min()}..{seg.max()}")
    if seg.shape == new_shape:
        return seg.astype(np.int8)
    seg, perm = _c_order_view(seg.astype(np.int8, copy=False))
    new_shape = tuple(new_shape[a] for a in perm)
    if separate_z_axis is None:
        result = _threshold_resample(seg, new_shape, (0, 1, 2))
    else:
        axis = perm.index(separate_z_axis)
        picked, pick_first = _slices_to_pick(seg.shape[axis], new_shape[axis], axis)
        if pick_first:
            seg = np.take(seg, picked, axis=axis)
        plane_shape = tuple(seg.shape[a] if a == axis else new_shape[a] for a in range(3))
        result = _threshold_resample(seg, plane_shape, tuple(a for a in range(3) if a != axis))
        if not pick_first:
            result = np.take(result, picked, axis=axis)
    return np.ascontiguousarray(result.transpose(np.argsort(perm)))

"""One channel of ``resample.resample_probabilities`` computed a slab of first-axis rows at a time.

Going back to the original grid of a 1000-slice case, one resampled float32 channel is 1 GB while the
label map needs one byte per voxel; computing the channels slab by slab keeps the float volumes at slab
size (``src.infer.geometry``).

Equality with the whole-volume result is by construction, not by tolerance: every output voxel goes
through the same float32 operations in the same order. The axes run in ``_resample_axes``' order; the
first axis uses the very row blocks of ``_row_blocks`` (so a slab starts on a block boundary, a multiple
of ROWS_PER_BLOCK), with the same input lines, and the other axes work slice by slice there as well;
clipping uses the whole channel's range (per slice of the separate axis when there is one), computed once.
This module reuses resample's private helpers on purpose: sharing them is what makes the results equal.
"""
from __future__ import annotations

import numpy as np

from src.data.resample import (_ROWS_PER_BLOCK, _apply_along_axis, _c_order_view, _check_axis, _check_new_shape,
                               _row_blocks, _slices_to_pick, resample_probabilities)

ROWS_PER_BLOCK = _ROWS_PER_BLOCK
LINEAR = 1


def _changing_axes(shape_in, shape_out, axes) -> list:
    changing = [a for a in axes if shape_in[a] != shape_out[a]]
    changing.sort(key=lambda a: shape_out[a] / shape_in[a])  # as _resample_axes: shrinking axes first
    return changing


def _apply_axes(part: np.ndarray, axes, new_shape) -> np.ndarray:
    for axis in axes:
        part = _apply_along_axis(np.ascontiguousarray(part, dtype=np.float32), axis, int(new_shape[axis]), LINEAR)
    return part


def _rows_of_axes(volume: np.ndarray, new_shape, axes, start: int, stop: int) -> np.ndarray:
    """Rows ``start:stop`` (first axis) of ``_resample_axes(volume, new_shape, axes, 1)``."""
    changing = _changing_axes(volume.shape, new_shape, axes)
    if 0 not in changing:
        part = _apply_axes(volume[start:stop], changing, new_shape)
        return np.array(part, dtype=np.float32, order="C") if not changing else part
    position = changing.index(0)
    blocks = [b for b in _row_blocks(volume.shape[0], int(new_shape[0]), LINEAR) if start <= b[0] < stop]
    low, high = min(b[2] for b in blocks), max(b[3] for b in blocks)
    part = np.ascontiguousarray(_apply_axes(volume[low:high], changing[:position], new_shape), dtype=np.float32)
    out = np.empty((stop - start,) + part.shape[1:], dtype=np.float32)
    for first_row, last_row, first, last, block in blocks:
        lines = part[first - low:last - low].reshape(last - first, -1)
        np.matmul(block, lines, out=out[first_row - start:last_row - start].reshape(last_row - first_row, -1))
    return _apply_axes(out, changing[position + 1:], new_shape)


class ChannelSlabs:
    """Rows of one resampled channel (d0, d1, d2) -> ``new_shape``: linear, order 0 along ``separate_z_axis``,
    clipped to the input's range as ``resample_probabilities`` does. ``rows(start, stop)`` needs ``start``
    on a multiple of ROWS_PER_BLOCK."""

    def __init__(self, volume: np.ndarray, new_shape, separate_z_axis: int | None = None):
        self.new_shape = _check_new_shape(new_shape)
        self.axis = _check_axis(separate_z_axis)
        view, perm = _c_order_view(np.asarray(volume))
        self.whole = None
        if perm != (0, 1, 2) or view.dtype != np.float32:  # not the layout the predictor gives: no slabs
            self.whole = resample_probabilities(np.asarray(volume)[None], self.new_shape, self.axis)[0]
            return
        self.volume = view
        if volume.shape == self.new_shape:
            return
        if self.axis is None:
            self.low, self.high = view.min(), view.max()
            return
        picked, pick_first = _slices_to_pick(view.shape[self.axis], self.new_shape[self.axis], self.axis)
        if self.axis == 0:  # every output row is one input slice: the slab picks its own
            self.source_slices = picked
            return
        source = view
        if pick_first:
            needed, picked = np.unique(picked, return_inverse=True)
            source = np.take(view, needed, axis=self.axis)
        self.source = source
        self.picked = None if np.array_equal(picked, np.arange(source.shape[self.axis])) else picked
        # each slice's range spans every row, so it is taken once from the whole channel
        in_plane = tuple(a for a in range(3) if a != self.axis)
        self.low = source.min(axis=in_plane[0], keepdims=True).min(axis=in_plane[1], keepdims=True)
        self.high = source.max(axis=in_plane[0], keepdims=True).max(axis=in_plane[1], keepdims=True)

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Output rows ``start:stop`` of the first axis, float32, C-ordered."""
        if self.whole is not None:
            return self.whole[start:stop]
        if self.volume.shape == self.new_shape:
            return self.volume[start:stop].astype(np.float32, copy=True)
        if start % ROWS_PER_BLOCK:
            raise ValueError(f"a slab starts on a multiple of {ROWS_PER_BLOCK} rows, not at {start}")
        if self.axis is None:
            result = _rows_of_axes(self.volume, self.new_shape, (0, 1, 2), start, stop)
            np.clip(result, self.low, self.high, out=result)
            return result
        if self.axis == 0:
            return self._rows_of_picked_slices(start, stop)
        return self._rows_across_separate_axis(start, stop)

    def _rows_of_picked_slices(self, start: int, stop: int) -> np.ndarray:
        # the separate axis is the first: each output row is one input slice resampled in-plane and clipped
        # to that slice's range; only the slices this slab picks are resampled
        sources, inverse = np.unique(self.source_slices[start:stop], return_inverse=True)
        slices = self.volume[sources]
        result = _rows_of_axes(slices, (len(sources),) + self.new_shape[1:], (1, 2), 0, len(sources))
        low = slices.min(axis=(1, 2), keepdims=True)
        high = slices.max(axis=(1, 2), keepdims=True)
        np.clip(result, low, high, out=result)
        return result if np.array_equal(inverse, np.arange(len(sources))) else np.take(result, inverse, axis=0)

    def _rows_across_separate_axis(self, start: int, stop: int) -> np.ndarray:
        source = self.source
        plane_shape = tuple(source.shape[a] if a == self.axis else self.new_shape[a] for a in range(3))
        in_plane = tuple(a for a in range(3) if a != self.axis)
        result = _rows_of_axes(source, plane_shape, in_plane, start, stop)
        np.clip(result, self.low, self.high, out=result)
        return result if self.picked is None else np.take(result, self.picked, axis=self.axis)

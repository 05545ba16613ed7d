"""Sliding-window inference as nnU-Net does it: overlapping patches, Gaussian importance weighting,
test-time mirroring, padding of images smaller than the patch.

The network is any callable ``net_fn(batch (n, C, *patch) float32) -> (n, K, *patch) float32``, so
one code path serves a Cell, an ensemble of Cells and a MindIR GraphCell. Memory stays bounded:
window logits are summed into one preallocated (K, *shape) float32 array plus one (*shape) weight
array, never one array per window. The Ascend 310 flow (preprocess.py/postprocess.py) reuses
``window_layout``, ``mirror_combinations``, ``pad_to_patch``, ``mean_over_mirrors`` and
``stitch_windows`` so that the stitching of offline results is the same code as the online path.
"""
import itertools
import math
from dataclasses import dataclass
from typing import Callable, Iterable, List, Optional, Sequence, Tuple

import numpy as np
from scipy.ndimage import gaussian_filter
from tqdm import tqdm

NetFn = Callable[[np.ndarray], np.ndarray]


def axis_starts(size: int, patch: int, step_size: float) -> List[int]:
    """Window start offsets along one axis: ceil((size - patch) / (step * patch)) + 1 windows spread
    evenly from 0 to size - patch (the image must already be at least ``patch`` long)."""
    if size < patch:
        raise ValueError(f"axis of size {size} is smaller than the patch {patch}; pad it first")
    count = int(math.ceil((size - patch) / (step_size * patch))) + 1
    if count == 1:
        return [0]
    spacing = (size - patch) / (count - 1)
    return [int(round(spacing * i)) for i in range(count)]


def window_starts(shape: Sequence[int], patch_size: Sequence[int], step_size: float) -> List[Tuple[int, ...]]:
    """All window start corners, in C order over the axes."""
    per_axis = [axis_starts(s, p, step_size) for s, p in zip(shape, patch_size)]
    return [tuple(corner) for corner in itertools.product(*per_axis)]


def gaussian_importance_map(patch_size: Sequence[int], sigma_scale: float = 1.0 / 8) -> np.ndarray:
    """A delta at the patch centre blurred with sigma = patch * sigma_scale per axis, scaled to a
    maximum of 1; zeros (far corners) take the smallest nonzero value so no voxel gets weight 0."""
    delta = np.zeros(tuple(patch_size), dtype=np.float64)
    delta[tuple(p // 2 for p in patch_size)] = 1.0
    sigmas = [p * sigma_scale for p in patch_size]
    blurred = gaussian_filter(delta, sigmas, order=0, mode="constant", cval=0.0)
    blurred /= blurred.max()
    blurred = blurred.astype(np.float32)
    nonzero = blurred[blurred > 0]
    blurred[blurred == 0] = nonzero.min()
    return blurred


def mirror_combinations(enabled: bool, spatial_axes: Sequence[int] = (0, 1, 2)) -> List[Tuple[int, ...]]:
    """Spatial axes to flip for each test-time mirror: the identity first, then every non-empty
    subset of ``spatial_axes`` (8 combinations for 3 axes)."""
    combos = [()]
    if enabled:
        for k in range(1, len(spatial_axes) + 1):
            combos.extend(tuple(c) for c in itertools.combinations(spatial_axes, k))
    return combos


def flip_spatial(batch: np.ndarray, spatial_flip: Tuple[int, ...]) -> np.ndarray:
    """Flip a (n, C, *spatial) batch along the given spatial axes (a contiguous copy, or the input)."""
    if not spatial_flip:
        return batch
    return np.ascontiguousarray(np.flip(batch, axis=tuple(a + 2 for a in spatial_flip)))


def patch_padding(shape: Sequence[int], patch_size: Sequence[int]) -> Tuple[Tuple[int, int], ...]:
    """(before, after) zero padding per axis that brings ``shape`` up to the patch, split evenly."""
    pads = []
    for size, patch in zip(shape, patch_size):
        missing = max(int(patch) - int(size), 0)
        pads.append((missing // 2, missing - missing // 2))
    return tuple(pads)


def pad_to_patch(data: np.ndarray, patch_size: Sequence[int]) -> Tuple[np.ndarray, Tuple[slice, ...]]:
    """Pad the spatial axes of (C, *shape) with zeros, evenly on both sides, up to the patch size.

    Returns the padded array (the input itself when nothing is needed) and the spatial slices that
    cut the original region back out of an array of the padded shape.
    """
    shape = data.shape[1:]
    pads = patch_padding(shape, patch_size)
    crop = tuple(slice(lo, lo + size) for (lo, _), size in zip(pads, shape))
    if not any(lo or hi for lo, hi in pads):
        return data, crop
    padded = np.pad(data, [(0, 0)] + list(pads), mode="constant", constant_values=0)
    return padded.astype(np.float32, copy=False), crop


@dataclass(frozen=True)
class WindowLayout:
    """Where the windows of one volume go: its shape, the padding up to the patch, the window corners
    (in padded coordinates). Stored by the Ascend 310 flow so stitching needs no image."""

    shape: Tuple[int, ...]
    patch_size: Tuple[int, ...]
    pads: Tuple[Tuple[int, int], ...]
    starts: Tuple[Tuple[int, ...], ...]

    @property
    def padded_shape(self) -> Tuple[int, ...]:
        return tuple(s + lo + hi for s, (lo, hi) in zip(self.shape, self.pads))

    @property
    def crop(self) -> Tuple[slice, ...]:
        return tuple(slice(lo, lo + s) for s, (lo, _) in zip(self.shape, self.pads))

    def region(self, start: Sequence[int]) -> Tuple[slice, ...]:
        return tuple(slice(s, s + p) for s, p in zip(start, self.patch_size))

    def to_json(self) -> dict:
        return {"shape": list(self.shape), "patch_size": list(self.patch_size),
                "pads": [list(p) for p in self.pads], "starts": [list(s) for s in self.starts]}

    @classmethod
    def from_json(cls, d: dict) -> "WindowLayout":
        return cls(tuple(int(v) for v in d["shape"]), tuple(int(v) for v in d["patch_size"]),
                   tuple((int(lo), int(hi)) for lo, hi in d["pads"]),
                   tuple(tuple(int(v) for v in s) for s in d["starts"]))


def window_layout(shape: Sequence[int], patch_size: Sequence[int], step_size: float) -> WindowLayout:
    shape = tuple(int(s) for s in shape)
    patch = tuple(int(p) for p in patch_size)
    pads = patch_padding(shape, patch)
    padded = tuple(s + lo + hi for s, (lo, hi) in zip(shape, pads))
    return WindowLayout(shape, patch, pads, tuple(window_starts(padded, patch, step_size)))


class WindowAccumulator:
    """Gaussian-weighted sum of window logits over a volume; ``result()`` divides by the summed weights.

    Holds one (K, *shape) float32 sum and one (*shape) float32 weight array; nothing per window.
    """

    def __init__(self, num_classes: int, shape: Sequence[int], patch_size: Sequence[int],
                 importance: Optional[np.ndarray] = None):
        self.patch_size = tuple(int(p) for p in patch_size)
        self.importance = gaussian_importance_map(self.patch_size) if importance is None else importance
        self.logit_sum = np.zeros((num_classes,) + tuple(shape), dtype=np.float32)
        self.weight_sum = np.zeros(tuple(shape), dtype=np.float32)
        self._scratch = np.empty((num_classes,) + self.patch_size, dtype=np.float32)

    def region(self, start: Sequence[int]) -> Tuple[slice, ...]:
        return tuple(slice(s, s + p) for s, p in zip(start, self.patch_size))

    def add(self, start: Sequence[int], window_logits: np.ndarray) -> None:
        """Add ``importance * window_logits`` (K, *patch) at ``start``."""
        region = self.region(start)
        np.multiply(window_logits, self.importance, out=self._scratch)
        self.logit_sum[(slice(None),) + region] += self._scratch
        self.weight_sum[region] += self.importance

    def result(self) -> np.ndarray:
        """The weighted average logits (K, *shape); divides the sum in place (call once)."""
        if not self.weight_sum.all():
            raise ValueError("some voxels were covered by no window")
        self.logit_sum /= self.weight_sum
        return self.logit_sum


def mean_over_mirrors(predict_flipped: Callable[[Tuple[int, ...]], np.ndarray], flips: List[Tuple[int, ...]],
                      out: np.ndarray) -> np.ndarray:
    """Average into ``out`` (n, K, *patch) the logits of every mirror combination, each flipped back.

    ``predict_flipped(flip)`` returns the (n, K, *patch) logits of the input flipped along ``flip``;
    online that calls the network, offline (Ascend 310 flow) it reads the stored result.
    """
    out[...] = 0.0
    for spatial_flip in flips:
        logits = np.asarray(predict_flipped(spatial_flip), dtype=np.float32)
        if logits.shape != out.shape:
            raise ValueError(f"window prediction has shape {logits.shape}, expected {out.shape}")
        out += flip_spatial(logits, spatial_flip)
    if len(flips) > 1:
        out /= np.float32(len(flips))
    return out


def stitch_windows(layout: WindowLayout, num_classes: int,
                   window_logits: Iterable[Tuple[Tuple[int, ...], np.ndarray]], progress: bool = True,
                   description: str = "windows") -> np.ndarray:
    """Gaussian-weighted average (K, *layout.shape) of ``(start, logits (K, *patch))`` pairs covering
    the layout's windows; padding is cut away. Shared by the online and the offline (310) path."""
    accumulator = WindowAccumulator(num_classes, layout.padded_shape, layout.patch_size)
    with tqdm(total=len(layout.starts), desc=description, unit="win", disable=not progress, leave=False) as bar:
        for start, logits in window_logits:
            accumulator.add(start, logits)
            bar.update(1)
    logits = accumulator.result()
    if logits.shape[1:] == layout.shape:
        return logits
    return np.ascontiguousarray(logits[(slice(None),) + layout.crop])


def sliding_window_logits(data: np.ndarray, net_fn: NetFn, patch_size: Sequence[int], num_classes: int,
                          step_size: float = 0.5, batch_size: int = 2, mirror: bool = False,
                          mirror_axes: Sequence[int] = (0, 1, 2), progress: bool = True,
                          description: str = "windows") -> np.ndarray:
    """Gaussian-weighted sliding-window logits (K, *shape) for a normalized volume (C, *shape).

    Every network call gets exactly ``batch_size`` windows (the last batch is filled with zeros and
    its extra outputs dropped) so a graph-mode network compiles one shape. With ``mirror`` each batch
    is also predicted flipped along every combination of ``mirror_axes`` and the logits averaged.
    """
    if data.ndim != len(patch_size) + 1:
        raise ValueError(f"expected (C, *spatial) data with {len(patch_size)} spatial axes, got {data.shape}")
    data = np.asarray(data, dtype=np.float32)
    layout = window_layout(data.shape[1:], patch_size, step_size)
    padded, _ = pad_to_patch(data, patch_size)
    flips = mirror_combinations(mirror, mirror_axes)
    batch = np.zeros((batch_size, data.shape[0]) + layout.patch_size, dtype=np.float32)
    batch_logits = np.empty((batch_size, num_classes) + layout.patch_size, dtype=np.float32)

    def predicted_windows():
        for first in range(0, len(layout.starts), batch_size):
            chunk = layout.starts[first:first + batch_size]
            batch[len(chunk):] = 0.0
            for i, start in enumerate(chunk):
                batch[i] = padded[(slice(None),) + layout.region(start)]
            mean_over_mirrors(lambda spatial_flip: net_fn(flip_spatial(batch, spatial_flip)), flips, batch_logits)
            for i, start in enumerate(chunk):
                yield start, batch_logits[i]

    return stitch_windows(layout, num_classes, predicted_windows(), progress, description)

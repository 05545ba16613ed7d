"""Locate, then segment: a cheap first pass on a coarse grid finds the kidneys and tumours, and the
full-resolution sliding window runs only where they are.

The first pass (the *locator*) is a small U-Net trained by train.py next to the main network
(``src.train.locator_training``) on the preprocessed volume averaged over blocks of ``factors`` voxels
(about ``locator_spacing_mm`` per axis). Its foreground probability gives the region:

- voxels with probability >= ``locate_threshold`` are *found*; nothing found -> **fall back** to the whole
  volume ("found nothing");
- voxels with probability >= ``locate_include`` are *candidates*; when more than ``locate_max_unsure`` of
  the candidates are not found (the first pass is mostly undecided) -> fall back ("unsure");
- otherwise each connected group of candidates gives a box on the full-resolution grid, widened by
  ``locate_margin_mm`` on every side (clipped to the volume).

Two ways to use the boxes (``locate``):

- ``windows``: the whole volume's own window layout, keeping only the windows that overlap a box. Every
  window that touches a voxel inside a box is run, so inside the boxes the Gaussian-weighted average is
  computed from exactly the windows of the whole-volume path: **the logits there are identical**. Outside
  the boxes the result is background. Saves time only where whole windows miss the boxes (long scans).
- ``crop``: one box around all boxes, grown to at least the patch, predicted with its own window layout.
  Far fewer windows (often one), but the windows sit elsewhere than on the whole volume, so labels near
  the middle of the region agree with the whole-volume path only as far as the network is translation
  invariant (measured in docs/PERFORMANCE.md); outside the box the result is background.

Outside the region the logits are set to background (``BACKGROUND_LOGIT`` for the other classes).
"""
import sys
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage

from src.infer import stage_times
from src.infer.sliding_window import (NetFn, WindowAccumulator, flip_spatial, mean_over_mirrors,
                                      mirror_combinations, pad_to_patch, sliding_window_logits, window_layout)

MODES = ("off", "auto", "windows", "crop")
# Logit of the non-background classes outside the region: softmax gives them ~1e-13.
BACKGROUND_LOGIT = -30.0
Box = Tuple[Tuple[int, int], ...]  # (lo, hi) per spatial axis, hi exclusive


@dataclass(frozen=True)
class LocateSettings:
    mode: str = "windows"  # windows | crop
    margin_mm: float = 20.0
    threshold: float = 0.5
    include: float = 0.1
    max_unsure: float = 0.5

    @classmethod
    def from_config(cls, cfg, mode: str) -> "LocateSettings":
        return cls(mode, float(cfg.locate_margin_mm), float(cfg.locate_threshold), float(cfg.locate_include),
                   float(cfg.locate_max_unsure))


@dataclass(frozen=True)
class Region:
    """The boxes to segment on the full-resolution grid, or ``boxes is None``: the whole volume (``reason``)."""

    boxes: Optional[Tuple[Box, ...]]
    reason: str

    @property
    def fallback(self) -> bool:
        return self.boxes is None


def coarse_factors(target_spacing: Sequence[float], coarse_mm: float) -> Tuple[int, ...]:
    """Whole voxels per coarse voxel on each axis, so that a coarse voxel is about ``coarse_mm`` long."""
    return tuple(max(1, int(round(coarse_mm / float(s)))) for s in target_spacing)


def coarse_shape(shape: Sequence[int], factors: Sequence[int]) -> Tuple[int, ...]:
    return tuple(-(-int(s) // int(f)) for s, f in zip(shape, factors))


def block_reduce(volume: np.ndarray, factors: Sequence[int], how: str = "mean") -> np.ndarray:
    """(C, *shape) -> (C, *coarse_shape): the mean (image) or max (labels) over blocks of ``factors``;
    the last partial block of an axis is padded by repeating the edge."""
    channels, shape = volume.shape[0], volume.shape[1:]
    target = coarse_shape(shape, factors)
    pad = [(0, 0)] + [(0, t * f - s) for s, t, f in zip(shape, target, factors)]
    if any(hi for _, hi in pad):
        volume = np.pad(volume, pad, mode="edge")
    blocks = volume.reshape(channels, target[0], factors[0], target[1], factors[1], target[2], factors[2])
    reduced = blocks.mean(axis=(2, 4, 6), dtype=np.float32) if how == "mean" else blocks.max(axis=(2, 4, 6))
    return np.ascontiguousarray(reduced)


def locate_region(foreground: np.ndarray, factors: Sequence[int], shape: Sequence[int],
                  spacing: Sequence[float], settings: LocateSettings) -> Region:
    """The region (module docstring) from the first pass's coarse foreground probability."""
    found = foreground >= settings.threshold
    if not found.any():
        return Region(None, "the first pass found nothing")
    candidates = foreground >= settings.include
    unsure = 1.0 - found.sum() / candidates.sum()
    if unsure > settings.max_unsure:
        return Region(None, f"the first pass is unsure ({unsure:.0%} of its candidate voxels below "
                            f"{settings.threshold:g})")
    margin = [int(np.ceil(settings.margin_mm / float(s))) for s in spacing]
    labelled, _ = ndimage.label(candidates)
    boxes = []
    for component in ndimage.find_objects(labelled):
        box = tuple((max(0, sl.start * f - m), min(int(size), sl.stop * f + m))
                    for sl, f, m, size in zip(component, factors, margin, shape))
        boxes.append(box)
    return Region(tuple(boxes), f"{len(boxes)} box(es)")


def overlaps(start: Sequence[int], patch: Sequence[int], box: Box) -> bool:
    return all(s < hi and s + p > lo for s, p, (lo, hi) in zip(start, patch, box))


def inside_mask(shape: Sequence[int], boxes: Sequence[Box]) -> np.ndarray:
    mask = np.zeros(tuple(shape), dtype=bool)
    for box in boxes:
        mask[tuple(slice(lo, hi) for lo, hi in box)] = True
    return mask


def kept_windows(shape, patch_size, step_size: float, boxes: Sequence[Box]):
    """(layout of the whole volume, the window starts that overlap a box). Boxes are in image coordinates,
    starts in the padded ones of the layout."""
    layout = window_layout(shape, patch_size, step_size)
    shifted = [tuple((lo + pad, hi + pad) for (lo, hi), (pad, _) in zip(box, layout.pads)) for box in boxes]
    kept = [start for start in layout.starts if any(overlaps(start, layout.patch_size, box) for box in shifted)]
    return layout, kept


def background_outside(logits: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Background logits (0 for class 0, ``BACKGROUND_LOGIT`` for the others) where ``mask`` is False."""
    outside = ~mask
    logits[0][outside] = 0.0
    for k in range(1, logits.shape[0]):
        logits[k][outside] = BACKGROUND_LOGIT
    return logits


def window_subset_logits(data: np.ndarray, net_fn: NetFn, patch_size, num_classes: int, boxes: Sequence[Box],
                         step_size: float = 0.5, batch_size: int = 2, mirror: bool = False) -> Tuple[np.ndarray, int, int]:
    """(logits (K, *shape), windows run, windows in the whole layout): the whole-volume windows that overlap
    a box, stitched as ``sliding_window_logits`` stitches; background outside the boxes."""
    shape = data.shape[1:]
    layout, kept = kept_windows(shape, patch_size, step_size, boxes)
    padded, _ = pad_to_patch(np.asarray(data, dtype=np.float32), patch_size)
    flips = mirror_combinations(mirror)
    batch = np.zeros((batch_size, data.shape[0]) + layout.patch_size, dtype=np.float32)
    batch_logits = np.empty((batch_size, num_classes) + layout.patch_size, dtype=np.float32)
    accumulator = WindowAccumulator(num_classes, layout.padded_shape, layout.patch_size)
    for first in range(0, len(kept), batch_size):
        chunk = kept[first:first + batch_size]
        batch[len(chunk):] = 0.0
        for i, start in enumerate(chunk):
            batch[i] = padded[(slice(None),) + layout.region(start)]
        mean_over_mirrors(lambda spatial_flip: net_fn(flip_spatial(batch, spatial_flip)), flips, batch_logits)
        for i, start in enumerate(chunk):
            accumulator.add(start, batch_logits[i])
    logits = accumulator.logit_sum
    covered = accumulator.weight_sum > 0
    np.divide(logits, accumulator.weight_sum, out=logits, where=covered[None])
    logits = np.ascontiguousarray(logits[(slice(None),) + layout.crop])
    return background_outside(logits, inside_mask(shape, boxes)), len(kept), len(layout.starts)


def crop_box(boxes: Sequence[Box], shape: Sequence[int], patch_size: Sequence[int]) -> Box:
    """The box around all ``boxes``, grown evenly to at least the patch on each axis (within the volume)."""
    box = []
    for axis, (size, patch) in enumerate(zip(shape, patch_size)):
        lo = min(b[axis][0] for b in boxes)
        hi = max(b[axis][1] for b in boxes)
        length = max(hi - lo, min(int(patch), int(size)))
        lo = max(0, min(lo - (length - (hi - lo)) // 2, int(size) - length))
        box.append((lo, lo + length))
    return tuple(box)


def crop_window_count(box: Box, patch_size: Sequence[int], step_size: float) -> int:
    """The windows ``crop_logits`` runs over ``box`` (``crop_box``'s)."""
    return len(window_layout([hi - lo for lo, hi in box], patch_size, step_size).starts)


def crop_logits(data: np.ndarray, net_fn: NetFn, patch_size, num_classes: int, boxes: Sequence[Box],
                step_size: float = 0.5, batch_size: int = 2, mirror: bool = False) -> Tuple[np.ndarray, int, int]:
    """(logits (K, *shape), windows run, windows of the whole volume): a sliding window over the crop box
    only, background elsewhere."""
    shape = data.shape[1:]
    box = crop_box(boxes, shape, patch_size)
    region = tuple(slice(lo, hi) for lo, hi in box)
    inner = sliding_window_logits(np.ascontiguousarray(data[(slice(None),) + region]), net_fn, patch_size,
                                  num_classes, step_size, batch_size, mirror, progress=False)
    logits = np.zeros((num_classes,) + tuple(shape), dtype=np.float32)
    logits[1:] = BACKGROUND_LOGIT
    logits[(slice(None),) + region] = inner
    total = len(window_layout(shape, patch_size, step_size).starts)
    return logits, crop_window_count(box, patch_size, step_size), total


class Locator:
    """The first pass: a network on coarse windows (``net_fn``), the coarse grid, its settings."""

    def __init__(self, net_fn: NetFn, patch_size: Sequence[int], factors: Sequence[int],
                 settings: LocateSettings, batch_size: int = 1):
        self.net_fn = net_fn
        self.patch_size = [int(p) for p in patch_size]
        self.factors = tuple(int(f) for f in factors)
        self.settings = settings
        self.batch_size = int(batch_size)

    def foreground(self, data: np.ndarray) -> np.ndarray:
        """Coarse foreground probability (everything but class 0) of a preprocessed volume (C, *shape)."""
        coarse = block_reduce(np.asarray(data, dtype=np.float32), self.factors, "mean")
        logits = sliding_window_logits(coarse, self.net_fn, self.patch_size, 2, 0.5, self.batch_size,
                                       False, progress=False)
        return 1.0 / (1.0 + np.exp(logits[0] - logits[1]))

    def region(self, data: np.ndarray, spacing: Sequence[float]) -> Region:
        return locate_region(self.foreground(data), self.factors, data.shape[1:], spacing, self.settings)


def region_logits(data: np.ndarray, net_fn: NetFn, region: Region, settings: LocateSettings, patch_size,
                  num_classes: int, step_size: float, batch_size: int, mirror: bool, progress: bool = True,
                  description: str = "windows") -> np.ndarray:
    """Sliding-window logits restricted to ``region`` (the whole volume when it is a fallback); one line on
    stderr says how many windows ran and why."""
    if region.fallback:
        total = len(window_layout(data.shape[1:], patch_size, step_size).starts)
        report_windows(total, total, f"whole volume: {region.reason}")
        return sliding_window_logits(data, net_fn, patch_size, num_classes, step_size, batch_size, mirror,
                                     progress=progress, description=description)
    predict = crop_logits if settings.mode == "crop" else window_subset_logits
    logits, run, total = predict(data, net_fn, patch_size, num_classes, region.boxes, step_size, batch_size,
                                 mirror)
    report_windows(run, total, f"{settings.mode}, {region.reason}, margin {settings.margin_mm:g} mm")
    return logits


def report_windows(run: int, total: int, how: str) -> None:
    stage_times.count("windows run", run)
    stage_times.count("windows skipped", total - run)
    print(f"locate: {run} of {total} windows run, {total - run} skipped ({how})", file=sys.stderr, flush=True)


def boxes_json(region: Region) -> Optional[List[list]]:
    return None if region.boxes is None else [[list(axis) for axis in box] for box in region.boxes]

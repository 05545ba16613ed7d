"""Test volumes for the resampling tests: smooth random fields and label maps, a kidney-like layout."""
import numpy as np
from scipy import ndimage


def smooth_field(rng, shape, sigma=2.0):
    return ndimage.gaussian_filter(rng.normal(size=shape), sigma).astype(np.float32)


def smooth_labels(rng, shape):
    field = smooth_field(rng, shape, 2.5)
    seg = (field > 0.03).astype(np.int16) + (field > 0.12) + (field < -0.15) * 3
    seg[:, :2] = -1
    return seg


def organ_labels(shape):
    """Kidney-like layout: two ellipsoids (1), a tumour sphere inside one (2), an ignored border (-1)."""
    grid = np.indices(shape, dtype=np.float64) / np.array(shape, dtype=np.float64)[:, None, None, None]
    seg = np.zeros(shape, dtype=np.int16)
    for centre in ((0.5, 0.45, 0.28), (0.5, 0.5, 0.72)):
        inside = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, (0.35, 0.3, 0.18))) <= 1
        seg[inside] = 1
    seg[sum(((g - c) / 0.12) ** 2 for g, c in zip(grid, (0.5, 0.5, 0.75))) <= 1] = 2
    seg[:, :2] = -1
    return seg


def dice(a, b):
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else 2.0 * np.logical_and(a, b).sum() / total

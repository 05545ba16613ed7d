"""Geometry primitives for the synthetic CT phantom: signed distances, partial-volume painting, noise.

Everything is in millimetres in the phantom's canonical frame, axis order (z, y, x) = (slice, row,
column): z grows towards the feet, y towards the back, x towards the patient's left. Shapes are painted
only inside their bounding box so a case costs a few full-volume passes, not one per organ.
"""
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Grid:
    """Voxel-centre positions of a volume: ``origin + spacing * index`` per axis (mm)."""

    shape: tuple
    spacing: tuple
    origin: tuple

    def box(self, center, half_extent):
        """Index slices and broadcastable (z, y, x) coordinates of the voxels within ``half_extent``
        of ``center`` (None if the box misses the volume)."""
        slices, coords = [], []
        for axis in range(3):
            lo = int(np.floor((center[axis] - half_extent[axis] - self.origin[axis]) / self.spacing[axis]))
            hi = int(np.ceil((center[axis] + half_extent[axis] - self.origin[axis]) / self.spacing[axis])) + 1
            lo, hi = max(lo, 0), min(hi, self.shape[axis])
            if lo >= hi:
                return None
            slices.append(slice(lo, hi))
            positions = self.origin[axis] + self.spacing[axis] * np.arange(lo, hi, dtype=np.float32)
            view = [1, 1, 1]
            view[axis] = hi - lo
            coords.append(positions.reshape(view))
        return tuple(slices), tuple(coords)

    def full(self):
        center = [o + s * (n - 1) / 2 for o, s, n in zip(self.origin, self.spacing, self.shape)]
        half = [s * n for s, n in zip(self.spacing, self.shape)]
        return self.box(center, half)

    def position(self, index):
        return np.array([o + s * i for o, s, i in zip(self.origin, self.spacing, index)], dtype=np.float64)


def orthonormal_frame(primary, secondary):
    """Rotation whose columns are local axes (primary, third, secondary) in (z, y, x) world coordinates;
    ``secondary`` is made orthogonal to ``primary``."""
    first = np.asarray(primary, dtype=np.float64)
    first = first / np.linalg.norm(first)
    second = np.asarray(secondary, dtype=np.float64)
    second = second - first * (second @ first)
    second = second / np.linalg.norm(second)
    third = np.cross(second, first)
    return np.stack([first, third, second], axis=1)


def jittered_frame(rng, max_tilt):
    """An almost axis-aligned frame: each axis tilted by up to ``max_tilt`` (radians, roughly)."""
    primary = np.array([1.0, 0.0, 0.0]) + rng.uniform(-max_tilt, max_tilt, 3)
    secondary = np.array([0.0, 0.0, 1.0]) + rng.uniform(-max_tilt, max_tilt, 3)
    return orthonormal_frame(primary, secondary)


def to_local(coords, center, frame):
    """Local coordinates (one array per local axis) of broadcast world coordinates."""
    offsets = [coords[axis] - np.float32(center[axis]) for axis in range(3)]
    return tuple(
        sum(np.float32(frame[axis, column]) * offsets[axis] for axis in range(3)) for column in range(3)
    )


@dataclass(frozen=True)
class Bumps:
    """Low-frequency surface perturbation: a few random plane waves of the normalized coordinates."""

    wave_vectors: np.ndarray
    amplitudes: np.ndarray
    phases: np.ndarray

    @classmethod
    def random(cls, rng, amplitude, frequency=(1.0, 3.0), count=5):
        directions = rng.normal(size=(count, 3))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        wave_vectors = directions * rng.uniform(*frequency, size=(count, 1))
        amplitudes = amplitude * rng.uniform(0.5, 1.0, count) / np.sqrt(count / 2)
        return cls(wave_vectors.astype(np.float32), amplitudes.astype(np.float32),
                   rng.uniform(0, 2 * np.pi, count).astype(np.float32))

    def __call__(self, normalized):
        total = 0.0
        for wave, amplitude, phase in zip(self.wave_vectors, self.amplitudes, self.phases):
            total = total + amplitude * np.sin(
                wave[0] * normalized[0] + wave[1] * normalized[1] + wave[2] * normalized[2] + phase)
        return total


def ellipsoid_distance(local, semi_axes, bumps=None):
    """Approximate signed distance (mm, negative inside) to a (bumpy) ellipsoid in its local frame:
    the level-set value divided by its gradient length, exact enough near the surface."""
    normalized = [local[axis] / np.float32(semi_axes[axis]) for axis in range(3)]
    radius = np.sqrt(normalized[0] ** 2 + normalized[1] ** 2 + normalized[2] ** 2)
    gradient = np.sqrt(sum((normalized[axis] / np.float32(semi_axes[axis])) ** 2 for axis in range(3)))
    gradient = gradient / np.maximum(radius, 1e-6)
    level = radius - 1.0
    if bumps is not None:
        level = level - bumps(normalized)
    return level / np.maximum(gradient, 1e-6)


def ellipsoid_radius(local, semi_axes):
    """Normalized ellipsoid radius (1 on the surface)."""
    return np.sqrt(sum((local[axis] / np.float32(semi_axes[axis])) ** 2 for axis in range(3)))


def tube_distance(grid, points, radii):
    """Signed distance to a tube of linearly varying radius around a polyline; returns
    (slices, distance) over the tube's bounding box, or None if it misses the volume."""
    points = np.asarray(points, dtype=np.float64)
    radii = np.asarray(radii, dtype=np.float64)
    reach = radii.max() + 3 * max(grid.spacing)
    lo, hi = points.min(axis=0) - reach, points.max(axis=0) + reach
    whole = grid.box((lo + hi) / 2, (hi - lo) / 2)
    if whole is None:
        return None
    whole_slices, _ = whole
    shape = tuple(s.stop - s.start for s in whole_slices)
    distance = np.full(shape, np.inf, dtype=np.float32)
    for start, end, r_start, r_end in zip(points[:-1], points[1:], radii[:-1], radii[1:]):
        seg_lo, seg_hi = np.minimum(start, end) - reach, np.maximum(start, end) + reach
        box = grid.box((seg_lo + seg_hi) / 2, (seg_hi - seg_lo) / 2)
        if box is None:
            continue
        slices, coords = box
        direction = end - start
        length2 = max(float(direction @ direction), 1e-9)
        offsets = [coords[axis] - np.float32(start[axis]) for axis in range(3)]
        t = sum(offsets[axis] * np.float32(direction[axis] / length2) for axis in range(3))
        t = np.clip(t, 0.0, 1.0)
        gap2 = sum((offsets[axis] - t * np.float32(direction[axis])) ** 2 for axis in range(3))
        segment = np.sqrt(gap2) - (r_start + t * (r_end - r_start))
        inner = tuple(slice(s.start - w.start, s.stop - w.start) for s, w in zip(slices, whole_slices))
        np.minimum(distance[inner], segment, out=distance[inner])
    return whole_slices, distance


def occupancy(distance, ramp_mm):
    """Fraction of a voxel inside the shape: a linear ramp one voxel wide across the surface."""
    return np.clip(0.5 - distance / np.float32(ramp_mm), 0.0, 1.0).astype(np.float32)


def _bspline_weights(size, coarse_size, cell):
    """(size, coarse_size) matrix of cubic B-spline weights: output voxel i sits at coarse position
    i / cell + 1.5, so every voxel has its four supporting coarse samples."""
    offsets = (np.arange(size)[:, None] / cell + 1.5) - np.arange(coarse_size)[None, :]
    t = np.abs(offsets)
    weights = np.where(t < 1, 2.0 / 3.0 - t ** 2 + t ** 3 / 2, np.where(t < 2, (2 - t) ** 3 / 6, 0.0))
    return weights.astype(np.float32)


def smooth_noise(rng, shape, cell_voxels):
    """Unit-variance random field varying over about ``cell_voxels`` voxels per axis: white noise on a
    coarse grid spread by a cubic B-spline, one axis at a time (a few small matrix products, smooth
    iso-contours, much cheaper than spline interpolation in 3D)."""
    cells = [max(float(c), 1.0) for c in cell_voxels]
    coarse_shape = [int(np.ceil(n / c)) + 4 for n, c in zip(shape, cells)]
    field = rng.standard_normal(coarse_shape, dtype=np.float32)
    for axis in (2, 1, 0):
        weights = _bspline_weights(shape[axis], coarse_shape[axis], cells[axis])
        field = np.moveaxis(np.tensordot(field, weights, axes=([axis], [1])), -1, axis)
    field = np.ascontiguousarray(field)
    field -= field.mean()
    field /= max(float(field.std()), 1e-6)
    return field


class Canvas:
    """The image being painted (HU, float32) and which structure owns each voxel (uint8)."""

    def __init__(self, grid, background_hu=-1000.0):
        self.grid = grid
        self.image = np.full(grid.shape, background_hu, dtype=np.float32)
        self.owner = np.zeros(grid.shape, dtype=np.uint8)
        self.ramp = float(np.prod(grid.spacing) ** (1.0 / 3.0))

    def paint(self, slices, fraction, hu, owner_id, within=None):
        """Blend ``hu`` (scalar or array over the box) in by ``fraction``; voxels more than half
        covered change owner. ``within`` restricts painting to voxels currently owned by those ids."""
        fraction = np.broadcast_to(fraction, tuple(s.stop - s.start for s in slices))
        if within is not None:
            fraction = fraction * np.isin(self.owner[slices], within)
        region = self.image[slices]
        region += fraction * (np.float32(hu) - region) if np.isscalar(hu) else fraction * (hu - region)
        self.owner[slices][fraction > 0.5] = owner_id

    def paint_distance(self, slices, distance, hu, owner_id, within=None):
        self.paint(slices, occupancy(distance, self.ramp), hu, owner_id, within)


def paint_mass(canvas, rng, center, radius, hu_base, owner_id, texture_hu=20.0, bumpiness=0.1,
               necrosis=True, hu_range=(-1000.0, 3000.0), within=None):
    """A lobulated mass of radius ~``radius`` mm with a mottled texture; when ``necrosis`` is set, half of
    the larger ones (> 14 mm) get a darker core."""
    grid = canvas.grid
    semi_axes = radius * rng.uniform(0.85, 1.15, 3)
    box = grid.box(center, semi_axes * (1.2 + bumpiness * 2) + 2 * max(grid.spacing))
    if box is None:
        return
    slices, coords = box
    frame = orthonormal_frame(rng.normal(size=3), rng.normal(size=3))
    local = to_local(coords, center, frame)
    distance = ellipsoid_distance(local, semi_axes, Bumps.random(rng, bumpiness, (1.0, 3.5), count=6))
    hu = np.full(distance.shape, hu_base, dtype=np.float32)
    if texture_hu > 0:
        cells = [max(rng.uniform(4.0, 7.0) / spacing, 1.0) for spacing in grid.spacing]
        hu += np.float32(texture_hu) * smooth_noise(rng, distance.shape, cells)
    if necrosis and radius > 14.0 and rng.random() < 0.5:
        core = ellipsoid_distance(local, semi_axes * rng.uniform(0.35, 0.55), Bumps.random(rng, 0.15))
        hu += occupancy(core, canvas.ramp) * (np.float32(rng.uniform(20, 35)) - hu)
    canvas.paint_distance(slices, distance, np.clip(hu, *hu_range), owner_id, within)


def random_position(canvas, rng, owner_id, margin_mm):
    """World position of a random voxel owned by ``owner_id`` at least ``margin_mm`` from the first and
    last slice (None if there is none)."""
    grid = canvas.grid
    margin = int(np.ceil(margin_mm / grid.spacing[0]))
    if grid.shape[0] <= 2 * margin:
        return None
    candidates = np.flatnonzero(canvas.owner[margin:grid.shape[0] - margin] == owner_id)
    if candidates.size == 0:
        return None
    index = np.unravel_index(candidates[rng.integers(candidates.size)], (grid.shape[0] - 2 * margin,) + grid.shape[1:])
    return grid.position((index[0] + margin, index[1], index[2]))

"""Kidneys of the synthetic phantom: cortex, medulla pyramids, sinus and hilum, tumours and cysts.

Positions are in the canonical (z, y, x) millimetre frame of ``phantom_shapes`` (z to the feet, y to
the back, x to the patient's left). ``scale`` shrinks the body and places the kidneys in it;
``size_scale`` (a little larger for small bodies, see ``phantom.kidney_size_scale``) sizes the kidneys and
their lesions.
"""
from dataclasses import dataclass

import numpy as np

from src.data.phantom_shapes import (
    Bumps, ellipsoid_distance, ellipsoid_radius, occupancy, orthonormal_frame, paint_mass, smooth_noise,
    to_local, tube_distance,
)


@dataclass(frozen=True)
class Kidney:
    side: int  # +1 patient left (x > 0), -1 patient right
    center: np.ndarray  # (z, y, x) mm
    frame: np.ndarray  # columns: long axis, antero-posterior axis, medial axis (towards the hilum)
    semi_axes: np.ndarray  # (long, antero-posterior, medial) mm

    @property
    def hilum(self):
        return self.center + self.frame @ np.array([0.0, 0.0, 0.75 * self.semi_axes[2]])

    def surface_point(self, direction):
        """Point of the smooth ellipsoid surface along a local direction, and the outward normal
        there (both in world coordinates)."""
        direction = np.asarray(direction, dtype=np.float64)
        local = direction / np.sqrt(np.sum((direction / self.semi_axes) ** 2))
        normal = local / self.semi_axes ** 2
        normal /= np.linalg.norm(normal)
        return self.center + self.frame @ local, self.frame @ normal


def sample_kidney(rng, side, scale, size_scale):
    center = scale * np.array([
        (-10.0 if side > 0 else 5.0) + rng.uniform(-8, 8),
        40.0 + rng.uniform(-5, 5),
        side * (72.0 + rng.uniform(-5, 5)),
    ])
    # Upper pole medial and posterior, hilum facing antero-medially (the usual lie of the kidneys).
    long_axis = (1.0, -0.15 + rng.uniform(-0.08, 0.08), side * (0.3 + rng.uniform(-0.1, 0.1)))
    medial = (0.0, -0.6 + rng.uniform(-0.15, 0.15), -side * 0.8)
    semi_axes = size_scale * np.array([rng.uniform(50, 58), rng.uniform(22, 27), rng.uniform(26, 32)])
    return Kidney(side, center, orthonormal_frame(long_axis, medial), semi_axes)


def paint_kidney(canvas, rng, kidney, hu, ids, vessel_roots):
    """Sinus fat and renal vessels first, then the parenchyma (cortex) and the medullary pyramids."""
    grid = canvas.grid
    box = grid.box(kidney.center, np.full(3, kidney.semi_axes.max() * 1.15))
    if box is None:
        return
    slices, coords = box
    local = to_local(coords, kidney.center, kidney.frame)
    outer = ellipsoid_distance(local, kidney.semi_axes, Bumps.random(rng, 0.03, (0.8, 2.0)))
    notch_center = np.array([0.0, 0.0, 0.62 * kidney.semi_axes[2]])
    notch_axes = kidney.semi_axes * np.array([0.42, 0.45, 0.62])
    notch = ellipsoid_distance([local[i] - np.float32(notch_center[i]) for i in range(3)], notch_axes)
    canvas.paint_distance(slices, np.maximum(outer, notch), hu["sinus_fat"], ids["fat"])

    for path, radius, key in vessel_roots:
        tube = tube_distance(grid, [*path, kidney.hilum], [radius] * (len(path) + 1))
        if tube is not None:
            canvas.paint_distance(tube[0], tube[1], hu[key], ids["vessel"])

    parenchyma = np.maximum(outer, -notch)
    cortex_hu = hu["cortex"] + 6.0 * smooth_noise(rng, parenchyma.shape, _cells(grid, 4.0))
    canvas.paint_distance(slices, parenchyma, cortex_hu, ids["kidney"])

    radius = ellipsoid_radius(local, kidney.semi_axes)
    angle = np.arctan2(local[1] / np.float32(kidney.semi_axes[1]), local[0] / np.float32(kidney.semi_axes[0]))
    pyramid_limit = 0.8 - 0.16 * (0.5 + 0.5 * np.cos(7 * angle + rng.uniform(0, 2 * np.pi)))
    medulla = (radius - pyramid_limit) * np.float32(kidney.semi_axes[1:].mean())
    medulla = np.maximum(medulla, np.float32(1.5 * canvas.ramp) - notch)
    fraction = occupancy(medulla, canvas.ramp) * occupancy(parenchyma, canvas.ramp)
    canvas.paint(slices, fraction, hu["medulla"], ids["kidney"], within=[ids["kidney"]])

    pelvis = ellipsoid_distance([local[i] - np.float32(notch_center[i]) for i in range(3)], notch_axes * 0.45)
    canvas.paint_distance(slices, pelvis, hu["urine"], ids["urinary"])


def place_lesion(rng, kidney, radius, depth_range, avoid=()):
    """Centre of a lesion growing out of the kidney surface (never from the hilum): the centre sits
    ``depth * radius`` inside the surface, so the lesion always overlaps the parenchyma."""
    for _ in range(200):
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        if direction[2] > 0.3:
            continue
        point, normal = kidney.surface_point(direction)
        center = point - normal * radius * rng.uniform(*depth_range)
        if all(np.linalg.norm(center - other_center) > radius + other_radius for other_center, other_radius in avoid):
            return center
    return kidney.center + kidney.frame @ np.array([kidney.semi_axes[0] * 0.5, 0.0, -kidney.semi_axes[2] * 0.5])


def paint_kidneys(canvas, rng, scale, size_scale, sides, tumours, cysts, hu, ids, vessel_roots):
    """All kidneys with their lesions; returns what was placed (radii in mm) for the case record."""
    kidneys = [sample_kidney(rng, side, scale, size_scale) for side in sides]
    for kidney in kidneys:
        paint_kidney(canvas, rng, kidney, hu, ids, vessel_roots(kidney))
    placed = []
    record = {"tumour_radii_mm": [], "cyst_radii_mm": []}
    # Lesions push bone, the spinal canal and the great vessels aside instead of replacing them.
    displaceable = [value for name, value in ids.items() if name not in ("bone", "csf", "vessel", "air", "table")]
    for _ in range(tumours if kidneys else 0):
        kidney = kidneys[rng.integers(len(kidneys))]
        radius = size_scale * rng.uniform(15.0, 35.0)
        center = place_lesion(rng, kidney, radius, (-0.3, 0.6), placed)
        paint_mass(canvas, rng, center, radius, rng.uniform(80, 105), ids["kidney_tumour"],
                   texture_hu=rng.uniform(15, 22), hu_range=(15.0, 140.0), within=displaceable)
        placed.append((center, radius))
        record["tumour_radii_mm"].append(round(float(radius), 1))
    for _ in range(cysts if kidneys else 0):
        kidney = kidneys[rng.integers(len(kidneys))]
        radius = size_scale * rng.uniform(10.0, 24.0)
        center = place_lesion(rng, kidney, radius, (0.1, 0.7), placed)
        paint_mass(canvas, rng, center, radius, rng.uniform(0, 20), ids["kidney_cyst"], texture_hu=0.0,
                   bumpiness=0.02, necrosis=False, within=displaceable)
        placed.append((center, radius))
        record["cyst_radii_mm"].append(round(float(radius), 1))
    return record


def _cells(grid, millimetres):
    return [max(millimetres / spacing, 1.0) for spacing in grid.spacing]

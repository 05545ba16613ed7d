"""Synthetic abdominal CT phantom (arterial phase): body wall, bowel, colon, stomach, liver with
vessels, spleen, lung bases, spine and ribs, pancreas, aorta/IVC, kidneys, tumours and cysts.

The phantom is built in millimetres in a canonical frame, array axes (z, y, x) = (slice, row,
column) with z towards the feet, y towards the back and x towards the patient's left - the KiTS19
storage order. A full-size body (about 300 x 250 mm) does not fit 100-250 voxels at 0.6-2.5 mm, so
each case shrinks the whole anatomy by a body scale in [0.45, 0.8] chosen together with the spacing.
The kidneys and their lesions shrink less (``kidney_scale``, 0.66-0.8), as in children, whose kidneys
are large for their bodies: that keeps tumours at 10-28 mm radius and kidneys ~65-95 mm long.
"""
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from src.data.phantom_kidney import paint_kidneys
from src.data.phantom_torso import (
    paint_body, paint_bowel, paint_colon, paint_great_vessels, paint_liver, paint_lungs, paint_muscles,
    paint_pancreas, paint_spine, paint_spleen, paint_stomach, paint_table,
)
from src.data.phantom_shapes import Canvas, Grid, smooth_noise

STRUCTURES = (
    "air", "fat", "muscle", "bowel", "colon", "colon_tumour", "stomach", "liver", "hepatic_vessel",
    "liver_tumour", "spleen", "lung", "lung_tumour", "bone", "csf", "pancreas", "pancreas_tumour",
    "vessel", "kidney", "kidney_tumour", "kidney_cyst", "urinary", "table",
)
STRUCTURE_IDS = {name: index for index, name in enumerate(STRUCTURES)}

KITS19_LABELS = {"kidney": 1, "kidney_cyst": 1, "kidney_tumour": 2}
# Label value of each structure per labelling scheme; unlisted structures are background (0).
LABEL_SCHEMES = {
    "kits19": KITS19_LABELS,
    "kits21": {"kidney": 1, "kidney_tumour": 2, "kidney_cyst": 3},
    "liver": {"liver": 1, "hepatic_vessel": 1, "liver_tumour": 2},
    "kidney": KITS19_LABELS,
    "hepatic_vessel": {"hepatic_vessel": 1, "liver_tumour": 2},
    "pancreas": {"pancreas": 1, "pancreas_tumour": 2},
    "colon": {"colon_tumour": 1},
    "lung": {"lung_tumour": 1},
    "spleen": {"spleen": 1},
}
# Which lesions each MOTS task's cases carry (kidney tumours and cysts are separate options).
TASK_LESIONS = {"liver": ("liver",), "hepatic_vessel": ("liver",), "pancreas": ("pancreas",),
                "colon": ("colon",), "lung": ("lung",)}

FIELD_OF_VIEW_MM = 330.0  # full-size body width 300 mm plus a margin, scaled with the body
# Where the first slice sits, as a fraction of the scan length above the kidneys: upper-abdominal
# tasks are scanned higher so that their organ is inside the field of view.
_FIRST_SLICE_FRACTION = {"lung": (0.7, 0.8), "liver": (0.58, 0.66), "hepatic_vessel": (0.58, 0.66),
                         "spleen": (0.58, 0.66)}


@dataclass(frozen=True)
class CaseGeometry:
    spacing: tuple  # (slice, row, column) mm
    shape: tuple
    body_scale: float
    z_start: float  # z of the first slice (mm, body frame: kidneys near 0)

    @property
    def kidney_scale(self):
        return kidney_size_scale(self.body_scale)


def kidney_size_scale(body_scale):
    """Size factor of the kidneys and their lesions: the cube root compresses the body-scale range."""
    return 0.8 * (body_scale / 0.8) ** (1.0 / 3.0)


@dataclass
class Phantom:
    image: np.ndarray  # float32 HU, integer-valued
    owner: np.ndarray  # uint8 structure id per voxel (STRUCTURES)
    spacing: tuple
    record: dict = field(default_factory=dict)

    def labels(self, scheme):
        values = np.zeros(len(STRUCTURES), dtype=np.uint8)
        for name, value in LABEL_SCHEMES[scheme].items():
            values[STRUCTURE_IDS[name]] = value
        return values[self.owner]


def sample_geometry(rng, task=None):
    """Spacing, array shape and body scale for one case: in-plane spacing log-uniform in [0.6, 2.5] mm,
    100-250 voxels in-plane, 40-100 slices of 1-5 mm over a 160-250 mm (full-size kidney) scan length.
    ``task`` (a MOTS task name) moves the scan up for the upper-abdominal and lung tasks."""
    pixel = float(np.exp(rng.uniform(np.log(0.6), np.log(2.5))))
    scale = rng.uniform(max(0.45, 100 * pixel / FIELD_OF_VIEW_MM), min(0.8, 250 * pixel / FIELD_OF_VIEW_MM))
    inplane = int(round(FIELD_OF_VIEW_MM * scale / pixel))
    length = kidney_size_scale(scale) * rng.uniform(160.0, 250.0)
    thickness = rng.uniform(max(1.0, length / 100), min(5.0, length / 40))
    slices = int(round(length / thickness))
    start_fraction = rng.uniform(*_FIRST_SLICE_FRACTION.get(task, (0.47, 0.53)))
    return CaseGeometry((round(thickness, 3), round(pixel, 3), round(pixel, 3)), (slices, inplane, inplane),
                        float(scale), -start_fraction * slices * thickness)


def geometry_for(shape, spacing, task=None):
    """Geometry for a fixed shape and spacing: the body is scaled to fill the in-plane field of view."""
    scale = min(shape[1] * spacing[1], shape[2] * spacing[2]) / FIELD_OF_VIEW_MM
    start_fraction = float(np.mean(_FIRST_SLICE_FRACTION.get(task, (0.5, 0.5))))
    return CaseGeometry(tuple(float(s) for s in spacing), tuple(int(n) for n in shape), float(scale),
                        -start_fraction * shape[0] * spacing[0])


def sample_tissue_hu(rng):
    """Per-case tissue attenuation (HU, arterial phase)."""
    return {
        "fat": rng.uniform(-110, -90), "sinus_fat": rng.uniform(-90, -60), "muscle": rng.uniform(40, 55),
        "bowel": rng.uniform(25, 45), "liver": rng.uniform(55, 70), "hepatic_vessel": rng.uniform(140, 180),
        "spleen": rng.uniform(95, 120), "pancreas": rng.uniform(90, 115), "lung": rng.uniform(-880, -820),
        "bone": rng.uniform(550, 700), "marrow": rng.uniform(200, 300), "disc": rng.uniform(70, 100),
        "csf": rng.uniform(5, 20), "aorta": rng.uniform(250, 350), "vein": rng.uniform(110, 150),
        "cortex": rng.uniform(150, 200), "medulla": rng.uniform(45, 75), "urine": rng.uniform(0, 15),
        "fluid": rng.uniform(5, 20), "gas": rng.uniform(-960, -900), "table": rng.uniform(50, 150),
    }


def render_phantom(rng, geometry, kidney_sides=(-1, 1), kidney_tumours=1, kidney_cysts=0, lesions=()):
    """Paint one case. ``kidney_sides``: -1 right, +1 left; ``lesions``: extra lesion sites among
    liver, pancreas, colon, lung (the MOTS tasks)."""
    spacing = geometry.spacing
    shape = geometry.shape
    scale = geometry.body_scale
    origin = (geometry.z_start, 8.0 * scale - spacing[1] * (shape[1] - 1) / 2, -spacing[2] * (shape[2] - 1) / 2)
    grid = Grid(shape, spacing, origin)
    canvas = Canvas(grid, background_hu=-1000.0)
    hu = sample_tissue_hu(rng)
    ids = STRUCTURE_IDS
    texture = smooth_noise(rng, shape, [max(6.0 / s, 1.0) for s in spacing])
    record = {"body_scale": round(scale, 3), "kidney_scale": round(geometry.kidney_scale, 3),
              "kidneys": sorted("left" if side > 0 else "right" for side in kidney_sides)}

    body = paint_body(canvas, rng, scale, hu, ids, texture)
    paint_bowel(canvas, rng, scale, hu, ids, body)
    record["colon_tumour_radii_mm"] = paint_colon(canvas, rng, scale, hu, ids, "colon" in lesions)
    paint_stomach(canvas, rng, scale, hu, ids)
    paint_muscles(canvas, rng, scale, hu, ids)
    record["liver_tumour_radii_mm"] = paint_liver(canvas, rng, scale, hu, ids, texture, "liver" in lesions)
    paint_spleen(canvas, rng, scale, hu, ids, texture)
    record["lung_tumour_radii_mm"] = paint_lungs(canvas, rng, scale, hu, ids, texture, body, "lung" in lesions)
    paint_spine(canvas, rng, scale, hu, ids, texture)
    record["pancreas_tumour_radii_mm"] = paint_pancreas(canvas, rng, scale, hu, ids, texture, "pancreas" in lesions)
    vessel_roots = paint_great_vessels(canvas, rng, scale, hu, ids)
    record.update(paint_kidneys(canvas, rng, scale, geometry.kidney_scale, kidney_sides, kidney_tumours,
                                kidney_cysts, hu, ids, vessel_roots))
    paint_table(canvas, rng, scale, hu, ids, body)
    del body

    noise_hu = float(rng.uniform(8.0, 20.0))
    image = _scanner_blur_and_noise(rng, canvas.image, noise_hu)
    np.clip(np.round(image, out=image), -1024.0, 3071.0, out=image)
    record["noise_hu"] = round(noise_hu, 1)
    return Phantom(image, canvas.owner, tuple(spacing), record)


def _scanner_blur_and_noise(rng, image, noise_hu):
    """Reconstruction blur plus mostly correlated noise (CT noise is not white) of std ``noise_hu``."""
    inplane = rng.uniform(0.5, 0.8)
    blurred = ndimage.gaussian_filter(image, (0.35, inplane, inplane), truncate=3.0)
    noise = ndimage.gaussian_filter(rng.standard_normal(image.shape, dtype=np.float32), (0.3, 0.7, 0.7),
                                    truncate=3.0)
    noise *= np.float32(0.95 * noise_hu / max(float(noise.std()), 1e-6))
    noise += rng.standard_normal(image.shape, dtype=np.float32) * np.float32(0.3 * noise_hu)
    blurred += noise
    return blurred


def make_phantom(rng, labels="kits21", kidneys=None, tumours=None, cysts=None, lesions=(), spacing=None,
                 shape=None):
    """One synthetic case: ``(image float32 HU, label uint8, spacing)`` in (slice, row, column) order.

    ``labels``: a scheme of LABEL_SCHEMES (kits19, kits21 or a MOTS task name). ``kidneys``: "both",
    "left" or "right"; ``tumours``/``cysts``: counts of kidney lesions; None draws them at random
    (kidney lesions only for the kidney schemes). ``lesions``: extra lesion sites (default: the
    task's). ``spacing`` and ``shape`` (both or neither) fix the grid, otherwise they are drawn too.
    """
    phantom = sample_phantom(rng, labels, kidneys, tumours, cysts, lesions, spacing, shape)
    return phantom.image, phantom.labels(labels), phantom.spacing


def sample_phantom(rng, labels="kits21", kidneys=None, tumours=None, cysts=None, lesions=(), spacing=None,
                   shape=None):
    """Like ``make_phantom`` but returns the whole Phantom (structure map and case record)."""
    if labels not in LABEL_SCHEMES:
        raise ValueError(f"unknown label scheme {labels!r}; expected one of {sorted(LABEL_SCHEMES)}")
    if (spacing is None) != (shape is None):
        raise ValueError("give both spacing and shape, or neither")
    geometry = sample_geometry(rng, labels) if shape is None else geometry_for(shape, spacing, labels)
    if kidneys is None:
        kidneys = "both" if rng.random() > 0.05 else ("left", "right")[rng.integers(2)]
    sides = {"both": (-1, 1), "left": (1,), "right": (-1,)}[kidneys]
    kidney_scheme = labels in ("kits19", "kits21", "kidney")
    if tumours is None:
        tumours = int(rng.choice([0, 1, 2], p=[0.05, 0.83, 0.12])) if kidney_scheme else 0
    if cysts is None:
        cysts = int(rng.choice([0, 1, 2], p=[0.55, 0.3, 0.15])) if kidney_scheme else 0
    return render_phantom(rng, geometry, sides, tumours, cysts, tuple(lesions) or TASK_LESIONS.get(labels, ()))

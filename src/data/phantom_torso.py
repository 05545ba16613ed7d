"""Everything in the synthetic phantom except the kidneys: body wall, ribs, bowel, colon, stomach,
muscles, liver and its vessels, spleen, lung bases, spine, pancreas, aorta/IVC and the table.

Landmarks are full-size positions in mm, (z, y, x) = (towards the feet, towards the back, towards the
patient's left), multiplied by the body ``scale``; the kidneys sit near z = 0.
"""
import numpy as np

from src.data.phantom_shapes import (
    Bumps, ellipsoid_distance, jittered_frame, occupancy, orthonormal_frame, paint_mass, random_position,
    smooth_noise, to_local, tube_distance,
)

_LONG = 1.0e6  # semi-axis along z of shapes that run through the whole volume


def _cells(grid, millimetres):
    return [max(millimetres / spacing, 1.0) for spacing in grid.spacing]


def _z_range(grid):
    return grid.origin[0], grid.origin[0] + grid.spacing[0] * (grid.shape[0] - 1)


def _column_box(grid, y, x, half_y, half_x):
    """Box over every slice around an in-plane position (for structures running along z)."""
    z_lo, z_hi = _z_range(grid)
    return grid.box(((z_lo + z_hi) / 2, y, x), ((z_hi - z_lo) / 2 + grid.spacing[0], half_y, half_x))


def paint_body(canvas, rng, scale, hu, ids, texture):
    """Skin-to-cavity layers (subcutaneous fat, muscle wall with ribs, visceral fat); returns the signed
    distance to the abdominal cavity wall over the whole volume (negative inside)."""
    slices, (z, y, x) = canvas.grid.full()
    half_x = 150.0 * scale * rng.uniform(0.92, 1.08)
    half_y = 125.0 * scale * rng.uniform(0.92, 1.08)
    girth = 1.0 + 0.04 * np.sin(2 * np.pi * z / (300.0 * scale) + rng.uniform(0, 2 * np.pi))
    zero = np.zeros((1, 1, 1), dtype=np.float32)
    body = ellipsoid_distance((zero, y, x), (_LONG, half_y * girth, half_x * girth),
                              Bumps.random(rng, 0.025, (1.0, 2.5)))
    fat_thickness = scale * rng.uniform(10, 30) * (1.0 - 0.5 * np.clip(y / half_y, 0.0, 1.0))
    wall_thickness = scale * rng.uniform(8, 13)
    canvas.paint_distance(slices, body, hu["fat"] + 8.0 * texture, ids["fat"])
    wall = body + fat_thickness
    canvas.paint_distance(slices, wall, hu["muscle"] + 4.0 * texture, ids["muscle"])

    # Ribs: oblique bands through the muscle wall, lower laterally, absent in front of the abdomen.
    angle = np.arctan2(y, x)
    bands = np.sin(2 * np.pi * (z + 25.0 * scale * np.abs(angle)) / (24.0 * scale) + rng.uniform(0, 2 * np.pi))
    inside_ring = occupancy(np.maximum(wall + 1.5 * scale, -(wall + wall_thickness - 1.5 * scale)), canvas.ramp)
    costal_margin = -20.0 * scale + 50.0 * scale * np.abs(x) / half_x
    rib = (np.clip((bands - 0.6) / 0.2, 0, 1) * inside_ring * occupancy(z - costal_margin, 4.0 * scale)
           * occupancy(-0.3 * half_y - y, 4.0 * scale))
    canvas.paint(slices, rib, hu["bone"] * 0.75, ids["bone"])

    cavity = wall + wall_thickness
    canvas.paint_distance(slices, cavity, hu["fat"] + 6.0 + 8.0 * texture, ids["fat"])
    return {"cavity": cavity, "back_y": float(half_y * 1.04)}


def paint_bowel(canvas, rng, scale, hu, ids, body):
    """Small-bowel loops: thresholded smooth noise in the anterior lower cavity, with gas pockets."""
    grid = canvas.grid
    slices, (z, y, _) = grid.full()
    loops = smooth_noise(rng, grid.shape, _cells(grid, 14.0))
    content = smooth_noise(rng, grid.shape, _cells(grid, 5.0))
    region = (occupancy(body["cavity"] + 3.0 * scale, canvas.ramp)
              * np.clip((20.0 * scale - y) / (10.0 * scale), 0, 1) * np.clip((z + 55.0 * scale) / (15.0 * scale), 0, 1))
    fraction = np.clip(0.5 + (loops - 0.3) / 0.4, 0, 1) * region
    gas = np.clip((content - 1.5) / 0.3, 0, 1)
    bowel_hu = hu["bowel"] + 8.0 * content + gas * (hu["gas"] - hu["bowel"])
    canvas.paint(slices, fraction, bowel_hu, ids["bowel"])


def paint_colon(canvas, rng, scale, hu, ids, with_tumour):
    grid = canvas.grid
    path = np.array([(90, -10, -100), (10, -5, -105), (-25, -30, -95), (-5, -65, -40), (-10, -65, 40),
                     (-45, -25, 95), (10, -5, 105), (90, -5, 100)], dtype=np.float64)
    path = scale * (path + rng.uniform(-8, 8, path.shape))
    radius = scale * rng.uniform(16, 22)
    wall = tube_distance(grid, path, [radius] * len(path))
    if wall is None:
        return []
    slices, distance = wall
    canvas.paint_distance(slices, distance, hu["muscle"], ids["colon"])
    stool = smooth_noise(rng, distance.shape, _cells(grid, 6.0))
    stool_fraction = np.clip((stool + 0.3) / 0.4, 0, 1)
    lumen_hu = hu["gas"] + stool_fraction * (-60.0 + 40.0 * stool - hu["gas"])
    canvas.paint_distance(slices, distance + 3.0 * scale, lumen_hu, ids["colon"])
    if not with_tumour:
        return []
    tumour_radius = scale * rng.uniform(14, 26)
    z_lo, z_hi = _z_range(grid)
    for _ in range(100):
        segment = rng.integers(len(path) - 1)
        point = path[segment] + rng.uniform() * (path[segment + 1] - path[segment])
        if z_lo + tumour_radius <= point[0] <= z_hi - tumour_radius:
            break
    offset = rng.normal(size=3)
    center = point + radius * 0.6 * offset / np.linalg.norm(offset)
    paint_mass(canvas, rng, center, tumour_radius, rng.uniform(45, 70), ids["colon_tumour"], texture_hu=10.0)
    return [round(float(tumour_radius), 1)]


def paint_stomach(canvas, rng, scale, hu, ids):
    grid = canvas.grid
    center = scale * (np.array([-90.0, -35.0, 45.0]) + rng.uniform(-6, 6, 3))
    semi_axes = scale * np.array([50.0, 35.0, 40.0]) * rng.uniform(0.85, 1.15, 3)
    box = grid.box(center, semi_axes * 1.3)
    if box is None:
        return
    slices, coords = box
    local = to_local(coords, center, jittered_frame(rng, 0.2))
    outer = ellipsoid_distance(local, semi_axes, Bumps.random(rng, 0.05))
    canvas.paint_distance(slices, outer, hu["muscle"], ids["stomach"])
    # Supine patient: gas rises to the front (small y) above the fluid level.
    gas = occupancy(coords[1] - np.float32(center[1] - 0.2 * semi_axes[1]), canvas.ramp)
    inner = ellipsoid_distance(local, semi_axes - 4.0 * scale)
    canvas.paint_distance(slices, inner, hu["fluid"] + gas * (hu["gas"] - hu["fluid"]), ids["stomach"])


def paint_muscles(canvas, rng, scale, hu, ids):
    grid = canvas.grid
    for side in (-1, 1):
        path = scale * np.array([(-50, 50, 25 * side), (40, 55, 33 * side), (140, 50, 42 * side)], dtype=np.float64)
        psoas = tube_distance(grid, path, scale * np.array([4.0, 15.0, 20.0]) * rng.uniform(0.85, 1.15))
        if psoas is not None:
            canvas.paint_distance(psoas[0], psoas[1], hu["muscle"], ids["muscle"])
        center_y, center_x = 98.0 * scale, 38.0 * scale * side
        box = _column_box(grid, center_y, center_x, 20.0 * scale, 28.0 * scale)
        if box is not None:
            slices, (_, y, x) = box
            zero = np.zeros((1, 1, 1), dtype=np.float32)
            erector = ellipsoid_distance((zero, y - np.float32(center_y), x - np.float32(center_x)),
                                         (_LONG, 17.0 * scale, 25.0 * scale))
            canvas.paint_distance(slices, erector, hu["muscle"], ids["muscle"])


def paint_liver(canvas, rng, scale, hu, ids, texture, with_tumour):
    """Right and left lobes, a portal/hepatic vessel tree inside, and (for liver tasks) tumours."""
    grid = canvas.grid
    lobes = [
        (scale * (np.array([-85.0, 5.0, -65.0]) + rng.uniform(-5, 5, 3)),
         scale * np.array([70.0, 80.0, 70.0]) * rng.uniform(0.9, 1.1, 3), jittered_frame(rng, 0.15)),
        (scale * (np.array([-95.0, -45.0, -5.0]) + rng.uniform(-5, 5, 3)),
         scale * np.array([40.0, 35.0, 55.0]) * rng.uniform(0.9, 1.1, 3), jittered_frame(rng, 0.15)),
    ]
    lo = np.min([c - a.max() * 1.1 for c, a, _ in lobes], axis=0)
    hi = np.max([c + a.max() * 1.1 for c, a, _ in lobes], axis=0)
    box = grid.box((lo + hi) / 2, (hi - lo) / 2)
    if box is None:
        return []
    slices, coords = box
    distance = np.minimum.reduce([
        ellipsoid_distance(to_local(coords, c, f), a, Bumps.random(rng, 0.06)) for c, a, f in lobes])
    canvas.paint_distance(slices, distance, hu["liver"] + 5.0 * texture[slices], ids["liver"])

    root = scale * (np.array([-45.0, 10.0, -25.0]) + rng.uniform(-4, 4, 3))
    min_radius = 0.7 * grid.spacing[1]
    for branch in range(7):
        center, semi_axes, frame = lobes[0 if branch < 5 else 1]
        direction = rng.normal(size=3)
        end = center + frame @ (semi_axes * direction / np.linalg.norm(direction) * rng.uniform(0.5, 0.85))
        middle = (root + end) / 2 + scale * rng.uniform(-8, 8, 3)
        radii = np.maximum(scale * np.array([4.0, 2.8, 1.6]), min_radius)
        tube = tube_distance(grid, [root, middle, end], radii)
        if tube is not None:
            canvas.paint_distance(tube[0], tube[1], hu["hepatic_vessel"], ids["hepatic_vessel"],
                                  within=[ids["liver"], ids["hepatic_vessel"]])
    radii = []
    for _ in range(rng.integers(1, 3) if with_tumour else 0):
        radius = scale * rng.uniform(12, 28)
        center = random_position(canvas, rng, ids["liver"], radius)
        if center is None:
            continue
        paint_mass(canvas, rng, center, radius, rng.uniform(25, 45), ids["liver_tumour"], texture_hu=8.0,
                   within=[ids["liver"], ids["hepatic_vessel"], ids["liver_tumour"]])
        radii.append(round(float(radius), 1))
    return radii


def paint_spleen(canvas, rng, scale, hu, ids, texture):
    grid = canvas.grid
    center = scale * (np.array([-95.0, 40.0, 92.0]) + rng.uniform(-5, 5, 3))
    semi_axes = scale * np.array([50.0, 30.0, 20.0]) * rng.uniform(0.85, 1.15, 3)
    box = grid.box(center, np.full(3, semi_axes.max() * 1.15))
    if box is None:
        return
    slices, coords = box
    frame = orthonormal_frame((1.0, 0.2 + rng.uniform(-0.1, 0.1), 0.35), (0.0, -0.5, 1.0))
    distance = ellipsoid_distance(to_local(coords, center, frame), semi_axes, Bumps.random(rng, 0.06))
    canvas.paint_distance(slices, distance, hu["spleen"] + 6.0 * texture[slices], ids["spleen"])


def paint_lungs(canvas, rng, scale, hu, ids, texture, body, with_tumour):
    """Lung bases above the diaphragm domes (deepest at the back), and for the lung task a nodule."""
    grid = canvas.grid
    for side in (-1, 1):
        center = scale * (np.array([-190.0, 25.0, 75.0 * side]) + rng.uniform(-8, 8, 3))
        semi_axes = scale * np.array([105.0, 95.0, 65.0]) * rng.uniform(0.92, 1.08, 3)
        box = grid.box(center, np.full(3, semi_axes.max() * 1.1))
        if box is None:
            continue
        slices, coords = box
        frame = orthonormal_frame((1.0, 0.35, 0.0), (0.0, 0.0, 1.0))
        distance = ellipsoid_distance(to_local(coords, center, frame), semi_axes, Bumps.random(rng, 0.03))
        distance = np.maximum(distance, body["cavity"][slices] + 2.0 * scale)
        canvas.paint_distance(slices, distance, hu["lung"] + 25.0 * texture[slices], ids["lung"])
    radii = []
    if with_tumour:
        radius = scale * rng.uniform(10, 22)
        center = random_position(canvas, rng, ids["lung"], radius)
        if center is not None:
            paint_mass(canvas, rng, center, radius, rng.uniform(20, 50), ids["lung_tumour"], texture_hu=10.0,
                       bumpiness=0.15)
            radii.append(round(float(radius), 1))
    return radii


def paint_spine(canvas, rng, scale, hu, ids, texture):
    """Vertebral bodies (cortex, marrow) alternating with discs, neural arches, spinal canal."""
    grid = canvas.grid
    size = rng.uniform(0.9, 1.1)
    body_y, arch_y = 55.0 * scale, 82.0 * scale
    box = _column_box(grid, (body_y + arch_y) / 2 + 10 * scale, 0.0, 45.0 * scale * size, 50.0 * scale)
    if box is None:
        return
    slices, (z, y, x) = box
    zero = np.zeros((1, 1, 1), dtype=np.float32)
    period = scale * rng.uniform(28, 34)
    disc = occupancy(np.mod(z - rng.uniform(0, period), period) - np.float32(0.22 * period), canvas.ramp)

    def column(center_y, center_x, half_y, half_x):
        return ellipsoid_distance((zero, y - np.float32(center_y), x - np.float32(center_x)),
                                  (_LONG, half_y * size, half_x * size))

    vertebral_body = column(body_y, 0.0, 16.0 * scale, 20.0 * scale)
    cortex = max(2.0, 0.8 * grid.spacing[1])
    bone_hu = np.where(vertebral_body < -cortex, hu["marrow"] + 20.0 * texture[slices], hu["bone"])
    canvas.paint_distance(slices, vertebral_body, bone_hu + disc * (hu["disc"] - bone_hu), ids["bone"])
    arch = np.minimum.reduce([
        column(arch_y, 0.0, 15.0 * scale, 15.0 * scale),
        column(105.0 * scale, 0.0, 15.0 * scale, 5.0 * scale),
        column(72.0 * scale, -32.0 * scale, 5.0 * scale, 14.0 * scale),
        column(72.0 * scale, 32.0 * scale, 5.0 * scale, 14.0 * scale),
    ])
    canvas.paint(slices, occupancy(arch, canvas.ramp) * (1.0 - disc), hu["bone"] * 0.8, ids["bone"])
    canvas.paint_distance(slices, column(arch_y, 0.0, 9.0 * scale, 9.0 * scale), hu["csf"], ids["csf"])


def paint_pancreas(canvas, rng, scale, hu, ids, texture, with_tumour):
    grid = canvas.grid
    path = scale * (np.array([(-50, 8, 78), (-38, 2, 30), (-30, 5, 0), (-20, 8, -28), (-5, 15, -25)],
                             dtype=np.float64) + rng.uniform(-4, 4, (5, 3)))
    radii = scale * np.array([9.0, 11.0, 10.0, 16.0, 12.0]) * rng.uniform(0.85, 1.15)
    tube = tube_distance(grid, path, radii)
    if tube is None:
        return []
    slices, distance = tube
    canvas.paint_distance(slices, distance, hu["pancreas"] + 10.0 * texture[slices], ids["pancreas"])
    if not with_tumour:
        return []
    segment = rng.integers(len(path) - 1)
    center = path[segment] + rng.uniform() * (path[segment + 1] - path[segment])
    radius = scale * rng.uniform(12, 20)
    paint_mass(canvas, rng, center, radius, rng.uniform(30, 50), ids["pancreas_tumour"], texture_hu=8.0)
    return [round(float(radius), 1)]


def paint_great_vessels(canvas, rng, scale, hu, ids):
    """Aorta and IVC; returns, per kidney, the renal artery and vein paths up to its hilum."""
    grid = canvas.grid
    z_lo, z_hi = _z_range(grid)
    aorta_y, aorta_x = scale * (28.0 + rng.uniform(-3, 3)), scale * (12.0 + rng.uniform(-3, 3))
    aorta_radius = scale * rng.uniform(10, 12)
    path = [(z_lo - 10, aorta_y, aorta_x), ((z_lo + z_hi) / 2, aorta_y - 3 * scale, aorta_x),
            (z_hi + 10, aorta_y, aorta_x)]
    aorta = tube_distance(grid, path, [aorta_radius] * 3)
    if aorta is not None:
        canvas.paint_distance(aorta[0], aorta[1], hu["aorta"], ids["vessel"])
    ivc_y, ivc_x = 32.0 * scale, -22.0 * scale
    box = _column_box(grid, ivc_y, ivc_x, 12.0 * scale, 16.0 * scale)
    if box is not None:
        slices, (_, y, x) = box
        zero = np.zeros((1, 1, 1), dtype=np.float32)
        ivc = ellipsoid_distance((zero, y - np.float32(ivc_y), x - np.float32(ivc_x)), (_LONG, 9.0 * scale, 13.0 * scale))
        canvas.paint_distance(slices, ivc, hu["vein"], ids["vessel"])

    artery_radius = max(3.0 * scale, 0.6 * grid.spacing[1])
    vein_radius = max(4.5 * scale, 0.7 * grid.spacing[1])

    def renal_vessels(kidney):
        level = kidney.center[0]
        artery = ([(level, aorta_y, aorta_x)], artery_radius, "aorta")
        if kidney.side > 0:  # the left renal vein crosses in front of the aorta
            vein_path = [(level, ivc_y, ivc_x), (level, aorta_y - aorta_radius - vein_radius, aorta_x)]
        else:
            vein_path = [(level, ivc_y, ivc_x)]
        return [artery, (vein_path, vein_radius, "vein")]

    return renal_vessels


def paint_table(canvas, rng, scale, hu, ids, body):
    """The scanner table: a thin slab curving up at the sides, behind the patient's back."""
    grid = canvas.grid
    top = body["back_y"] + scale * rng.uniform(6, 14)
    box = grid.box((0.0, top, 0.0), (1e6, 30.0 * scale, 200.0 * scale))
    if box is None:
        return
    slices, (_, y, x) = box
    surface = top - 0.0006 / scale * x ** 2
    distance = np.maximum(np.abs(y - (surface + 4.0 * scale)) - 4.0 * scale, np.abs(x) - 170.0 * scale)
    canvas.paint_distance(slices, distance, hu["table"], ids["table"])

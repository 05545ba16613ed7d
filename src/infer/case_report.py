"""Per-case clinical summary of a predicted label map: volumes per side, largest tumour diameter, overlay.

Side rule: the left-right array axis and its direction come from the image affine (nibabel axis
codes; for KiTS files that is the column axis). The patient midline is the centroid, along that
axis, of the body (voxels above -500 HU); every labelled voxel on the patient's left of it counts as
left, the others as right. Diameter: the maximum Feret diameter (largest distance between two points)
of the largest face-connected tumour component, measured in mm over the voxels' corner points
(so a single voxel measures its own diagonal), spacing aware.

Everything that reads the whole label map or image runs in slabs of the first axis (``src.infer.slabs``):
per-slice counts and the largest component cost slab-sized temporaries, not copies of the case.
"""
import io
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import nibabel as nib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy.spatial import ConvexHull, QhullError

from src.data.io import ImageMeta, voxel_volume_ml
from src.files import atomic_write_bytes, atomic_write_json, file_digest
from src.infer.slabs import SLAB_VOXELS as CHUNK_VOXELS, Components, axis_profile

BODY_THRESHOLD_HU = -500.0
CT_WINDOW_HU = (-160.0, 240.0)
TUMOUR_NAMES = ("tumor", "tumour")
SIDE_RULE = ("left/right from the image affine's left-right axis; midline = centroid of the body "
             f"(voxels > {BODY_THRESHOLD_HU:g} HU) along that axis; voxels on the patient's left of it count as left")
OUTLINE_COLOURS = {"kidney": "lime", "tumor": "red", "tumour": "red", "cyst": "deepskyblue"}
FALLBACK_COLOURS = ("orange", "magenta", "yellow", "cyan", "white")


def compact_ct(image: np.ndarray) -> np.ndarray:
    """``image`` as int16 when that holds every voxel exactly (CT is stored as whole HU), else as it is.

    predict.py keeps the image for the report from the sliding window to the end of the case; int16
    halves that (0.5 GB of a 1000 x 512 x 512 case). Checked and converted a chunk at a time; the report reads
    the same values either way (its thresholds compare exactly, the overlay slice goes back to float32).
    """
    if image.dtype.kind != "f" or not (image.flags.c_contiguous or image.flags.f_contiguous):
        return image
    info = np.iinfo(np.int16)
    compact = np.empty_like(image, dtype=np.int16)  # same memory order, so both flatten to views
    source, target = image.ravel(order="K"), compact.ravel(order="K")
    for start in range(0, source.size, CHUNK_VOXELS):
        part = source[start:start + CHUNK_VOXELS]
        if not (info.min <= part.min() and part.max() <= info.max):  # NaN fails too
            return image
        target[start:start + CHUNK_VOXELS] = part
        if not np.array_equal(target[start:start + CHUNK_VOXELS], part):  # a fraction was cut off
            return image
    return compact


def lateral_axis(affine) -> Tuple[int, bool]:
    """(array axis pointing along the patient's left-right direction, True if increasing index goes left)."""
    codes = nib.aff2axcodes(np.asarray(affine, dtype=np.float64))
    for axis, code in enumerate(codes):
        if code in ("L", "R"):
            return axis, code == "L"
    return 2, True


def axial_axis(affine) -> int:
    """The array axis running head-foot (KiTS: the slice axis); axial slices are taken across it."""
    codes = nib.aff2axcodes(np.asarray(affine, dtype=np.float64))
    for axis, code in enumerate(codes):
        if code in ("S", "I"):
            return axis
    return 0


def midline_position(image: np.ndarray, axis: int) -> float:
    """Centroid index of the body along ``axis``; the image centre when nothing is above the threshold."""
    profile = axis_profile(image, axis, lambda part: part > BODY_THRESHOLD_HU).astype(np.float64)
    if profile.sum() == 0:
        return (image.shape[axis] - 1) / 2.0
    return float(np.dot(np.arange(image.shape[axis]), profile) / profile.sum())


def side_volumes(label: np.ndarray, spacing: Sequence[float], labels: Dict[str, int], axis: int,
                 midline: float, left_is_high: bool) -> Dict[str, Dict[str, float]]:
    """Volume in mL of each foreground label, split left/right at ``midline`` along ``axis``."""
    voxel_ml = voxel_volume_ml(spacing)
    index = np.arange(label.shape[axis])
    on_left = index > midline if left_is_high else index < midline
    volumes = {}
    for name, value in sorted(labels.items(), key=lambda item: item[1]):
        if value <= 0:
            continue
        profile = axis_profile(label, axis, lambda part, value=value: part == value)
        left = float(profile[on_left].sum()) * voxel_ml
        right = float(profile[~on_left].sum()) * voxel_ml
        volumes[name] = {"left": left, "right": right, "total": left + right}
    return volumes


def _hull_points(points: np.ndarray) -> np.ndarray:
    """The vertices of the convex hull of (N, 3) points (all of them when there are too few or they are
    degenerate); the farthest pair of a set is always a pair of hull vertices."""
    if len(points) < 5:
        return points
    try:
        return points[ConvexHull(points).vertices]
    except QhullError:  # coplanar or collinear: joggling still finds the extreme points
        try:
            return points[ConvexHull(points, qhull_options="QJ").vertices]
        except QhullError:
            return points


def line_extremes(mask: np.ndarray) -> np.ndarray:
    """(N, 3) int64 indices, in C order, of the first and last voxel of ``mask`` on each line along the last
    axis. Every other voxel lies between two of them, so it is never a vertex of the hull: these points
    span the hull of the whole mask (and of its boundary, which the old code gathered)."""
    hit = mask.any(axis=-1)
    if not hit.any():
        return np.zeros((0, 3), dtype=np.int64)
    first = np.argmax(mask, axis=-1)[hit]
    last = mask.shape[-1] - 1 - np.argmax(mask[..., ::-1], axis=-1)[hit]
    lines = np.argwhere(hit)
    points = np.stack([np.column_stack([lines, first]), np.column_stack([lines, last])], axis=1).reshape(-1, 3)
    keep = np.ones(len(points), dtype=bool)
    keep[1::2] = first != last  # a one-voxel line once
    return points[keep].astype(np.int64)


def feret_diameter_of_points(points: np.ndarray, spacing: Sequence[float]) -> float:
    """Largest distance (mm) between two corner points of the voxels at ``points`` (N, 3 indices spanning the
    hull of a mask); 0 for none.

    The corner cloud is the Minkowski sum of the voxel centres and one voxel box, so its hull vertices
    are hull vertices of the centres plus box corners: only those few points are expanded, which keeps
    a large (or noisy) component cheap. Coordinates are taken from the points' bounding box corner, as
    the mask's own box would give them.
    """
    if len(points) == 0:
        return 0.0
    scale = np.asarray(spacing, dtype=np.float64)
    extreme_centres = _hull_points((points - points.min(axis=0)) * scale)
    corners = np.array([[dz, dy, dx] for dz in (-0.5, 0.5) for dy in (-0.5, 0.5) for dx in (-0.5, 0.5)]) * scale
    hull = _hull_points((extreme_centres[:, None, :] + corners[None]).reshape(-1, 3))
    longest = 0.0
    for start in range(0, len(hull), 1024):
        chunk = hull[start:start + 1024]
        squared = ((chunk[:, None, :] - hull[None, :, :]) ** 2).sum(axis=-1)
        longest = max(longest, float(squared.max()))
    return float(np.sqrt(longest))


def max_feret_diameter(mask: np.ndarray, spacing: Sequence[float]) -> float:
    """Largest distance (mm) between two corner points of the voxels of ``mask``; 0 for an empty mask."""
    return feret_diameter_of_points(line_extremes(np.asarray(mask, dtype=bool)), spacing)


def largest_component_diameter(label: np.ndarray, value: int, spacing: Sequence[float],
                               rows: Optional[int] = None) -> Optional[float]:
    """Feret diameter (mm) of the largest face-connected component of ``label == value``; None if absent.
    Slab by slab (``rows`` first-axis rows each, default ``slabs.SLAB_VOXELS``' worth)."""
    components = Components(label, lambda part: part == value, rows)
    largest = components.largest()
    if largest is None:
        return None
    points = []
    for start, _, mask, _ in components.masks(largest):
        found = line_extremes(mask)
        found[:, 0] += start
        points.append(found)
    return feret_diameter_of_points(np.concatenate(points), spacing)


def tumour_value(labels: Dict[str, int]) -> Optional[int]:
    for name, value in labels.items():
        if name.lower() in TUMOUR_NAMES:
            return int(value)
    return None


def overlay_slice_index(label: np.ndarray, axis: int, labels: Dict[str, int]) -> int:
    """The axial slice with the largest tumour area; else the largest foreground area; else the middle."""
    tumour = tumour_value(labels)
    tests = ([] if tumour is None else [lambda part: part == tumour]) + [lambda part: part > 0]
    for test in tests:
        area = axis_profile(label, axis, test)
        if area.size and area.max() > 0:
            return int(np.argmax(area))
    return label.shape[axis] // 2


def side_markers(axial: int, lateral: int, left_is_high: bool) -> Optional[Tuple[str, str]]:
    """Patient side shown at the image's left and right edges when the left-right axis runs along the
    displayed columns (the last in-plane axis); None otherwise."""
    in_plane = [a for a in range(3) if a != axial]
    if lateral != in_plane[1]:
        return None
    return ("R", "L") if left_is_high else ("L", "R")


def render_overlay(image: np.ndarray, label: np.ndarray, spacing: Sequence[float], labels: Dict[str, int],
                   axis: int, index: int, title: str, sides: Optional[Tuple[str, str]] = None) -> bytes:
    """PNG bytes of one axial slice, CT windowed to CT_WINDOW_HU, with an outline per foreground label
    and, when given, the patient side at the left and right image edges."""
    # basic indexing, a view: np.take copies a whole Fortran-ordered (nibabel) image to C order first
    ct = np.array(image[(slice(None),) * axis + (index,)], dtype=np.float32)  # a compact_ct slice back as read
    seg = np.array(label[(slice(None),) * axis + (index,)])
    in_plane = [s for a, s in enumerate(spacing) if a != axis]
    figure = Figure(figsize=(6, 6 * ct.shape[0] * in_plane[0] / (ct.shape[1] * in_plane[1])), dpi=100)
    FigureCanvasAgg(figure)
    ax = figure.add_axes([0, 0, 1, 0.94])
    ax.imshow(ct, cmap="gray", vmin=CT_WINDOW_HU[0], vmax=CT_WINDOW_HU[1], aspect=in_plane[0] / in_plane[1],
              interpolation="nearest")
    foreground = [(name, value) for name, value in sorted(labels.items(), key=lambda item: item[1]) if value > 0]
    for i, (name, value) in enumerate(foreground):
        mask = seg == value
        if mask.any():
            colour = OUTLINE_COLOURS.get(name.lower(), FALLBACK_COLOURS[i % len(FALLBACK_COLOURS)])
            ax.contour(mask.astype(np.float32), levels=[0.5], colors=[colour], linewidths=1.0)
            ax.plot([], [], color=colour, label=name)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right", fontsize=8, framealpha=0.6)
    if sides is not None:
        for x, text in zip((0.02, 0.98), sides):
            ax.text(x, 0.5, text, transform=ax.transAxes, color="yellow", fontsize=14, ha="center", va="center")
    ax.set_axis_off()
    figure.suptitle(title, fontsize=9)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def build_case_report(case_id: str, image: np.ndarray, label: np.ndarray, meta: ImageMeta,
                      labels: Dict[str, int]) -> dict:
    """Volumes per side (mL) per foreground label and the largest tumour diameter (mm) of one case."""
    axis, left_is_high = lateral_axis(meta.affine)
    midline = midline_position(image, axis)
    tumour = tumour_value(labels)
    diameter = largest_component_diameter(label, tumour, meta.spacing) if tumour is not None else None
    return {
        "case_id": case_id,
        "image": meta.source,
        "spacing_mm": [float(s) for s in meta.spacing],
        "volumes_ml": side_volumes(label, meta.spacing, labels, axis, midline, left_is_high),
        "largest_tumor_diameter_mm": diameter,
        "side_rule": SIDE_RULE,
        "lateral_axis": axis,
        "midline_index": midline,
    }


def report_line(report: dict) -> str:
    parts = []
    for name, volume in report["volumes_ml"].items():
        parts.append(f"{name} L {volume['left']:.1f} mL R {volume['right']:.1f} mL")
    diameter = report.get("largest_tumor_diameter_mm")
    parts.append("no tumour" if diameter is None else f"largest tumour {diameter:.1f} mm")
    return f"{report['case_id']}: " + ", ".join(parts)


def write_case_outputs(case_id: str, image: np.ndarray, label: np.ndarray, meta: ImageMeta,
                       labels: Dict[str, int], report_path, overlay_path, provenance: Optional[dict] = None,
                       page_path=None, settings: Optional[Sequence[Tuple[str, str]]] = None) -> dict:
    """Write ``<case>_overlay.png``, the HTML page when ``page_path`` is given (report_page.py; ``settings``:
    the model and settings lines it lists) and then ``<case>_report.json`` (all atomically; the report
    last, as predict.py's commit record, with ``provenance`` and the sha256 of the others); returns it."""
    report = build_case_report(case_id, image, label, meta, labels)
    axis = axial_axis(meta.affine)
    index = overlay_slice_index(label, axis, labels)
    title = f"{case_id}  slice {index}  " + ("" if report["largest_tumor_diameter_mm"] is None
                                              else f"largest tumour {report['largest_tumor_diameter_mm']:.1f} mm")
    sides = side_markers(axis, *lateral_axis(meta.affine))
    atomic_write_bytes(overlay_path, render_overlay(image, label, meta.spacing, labels, axis, index, title, sides))
    report.update({"overlay": str(overlay_path), "overlay_axis": axis, "overlay_slice": index,
                   "overlay_digest": file_digest(overlay_path)})
    if page_path is not None:
        from src.infer.report_page import write_report_page  # it builds on this module's helpers

        write_report_page(page_path, report, image, label, meta, labels, settings)
        report.update({"page": Path(page_path).name, "page_digest": file_digest(page_path)})
    report = {**(provenance or {}), **report}
    atomic_write_json(report_path, report)
    return report

"""``<case>_report.html``: one self-contained page a clinician can read, next to ``<case>_report.json``.

What it shows: the volumes per side in mL (the sides from the affine, as in the JSON report), the
largest tumour diameter, axial, coronal and sagittal slices through the centre of the largest tumour
(the largest kidney component when there is none) with the label outlines, and the model and settings
that produced it. The three views are PNGs embedded as data URIs, so the page is one file that can be
mailed or archived. They are shown in the radiological convention: the patient's right on the image's
left (axial, coronal), anterior at the top of the axial view and on the left of the sagittal view,
head at the top; each edge is lettered.

The page holds nothing that changes between two runs of the same model on the same image (no time, no
output path), so its sha256 in the JSON report identifies it like the overlay's.
"""
from __future__ import annotations

import base64
import html
import io
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from matplotlib.colors import to_rgb
from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from src.data.io import ImageMeta
from src.files import atomic_write_text
from src.infer.case_report import CT_WINDOW_HU, FALLBACK_COLOURS, OUTLINE_COLOURS, tumour_value
from src.infer.slabs import Components

VIEW_PIXELS = 360  # the longer side of each view
MARK_COLOUR = (255, 255, 0)
# Display frame: array axes running towards the patient's left, back and feet.
DISPLAY_CODES = ("L", "P", "I")
# (title, the display axis held fixed, the display axes shown as (rows, columns), edge letters
# (top, bottom, left, right))
VIEWS = (
    ("axial", 2, (1, 0), ("A", "P", "R", "L")),
    ("coronal", 1, (2, 0), ("S", "I", "R", "L")),
    ("sagittal", 0, (2, 1), ("S", "I", "A", "P")),
)


def _to_display(volume: np.ndarray, affine) -> Tuple[np.ndarray, np.ndarray]:
    """(the volume in the display frame, the orientation transform used)."""
    transform = ornt_transform(io_orientation(np.asarray(affine, dtype=np.float64)), axcodes2ornt(DISPLAY_CODES))
    return apply_orientation(volume, transform), transform


def focus_point(label: np.ndarray, labels: Dict[str, int]) -> Tuple[Tuple[int, int, int], str]:
    """(voxel index, what it is) the views go through: the centre of mass of the largest tumour component,
    else of the largest component of any foreground label, else the volume centre. Slab by slab
    (``src.infer.slabs``); the centre from integer index sums, so it equals ``ndimage.center_of_mass``."""
    tumour = tumour_value(labels)
    tests = ([] if tumour is None else [(lambda part: part == tumour, "largest tumour")]) + [
        (lambda part: part > 0, "largest labelled structure")]
    for test, what in tests:
        components = Components(label, test)
        largest = components.largest()
        if largest is None:
            continue
        sums = np.zeros(3, dtype=np.int64)
        for start, _, mask, _ in components.masks(largest):
            index = np.nonzero(mask)
            sums += [int(index[0].sum()) + start * len(index[0]), int(index[1].sum()), int(index[2].sum())]
        centre = sums / float(components.sizes[largest])
        return tuple(int(round(c)) for c in centre), what
    return tuple(n // 2 for n in label.shape), "volume centre"


def _plane(volume: np.ndarray, fixed: int, index: int, rows: int, columns: int) -> np.ndarray:
    # basic indexing: np.take would first copy the whole (flipped, transposed) volume to C order
    plane = np.array(volume[(slice(None),) * fixed + (index,)])
    return plane.T if rows > columns else plane  # the two free axes stay in order; rows come first


def _outline(mask: np.ndarray) -> np.ndarray:
    """The inner two-pixel border of a mask (drawn on the upsampled picture, so lines stay thin)."""
    return mask & ~ndimage.binary_erosion(mask, iterations=2, border_value=0)


def _colour(name: str, i: int) -> Tuple[int, int, int]:
    return tuple(int(round(255 * c)) for c in to_rgb(OUTLINE_COLOURS.get(name.lower(),
                                                                         FALLBACK_COLOURS[i % len(FALLBACK_COLOURS)])))


def render_views(image: np.ndarray, label: np.ndarray, affine, spacing: Sequence[float], labels: Dict[str, int],
                 point: Sequence[int]) -> List[Tuple[str, bytes]]:
    """(view name, PNG bytes) of the axial, coronal and sagittal slices through voxel ``point``: CT windowed
    to CT_WINDOW_HU, voxels drawn as rectangles of their true aspect (nearest neighbour, up to
    VIEW_PIXELS on the longer side), label outlines in the overlay's colours, a cross at ``point``.
    Drawn with numpy and Pillow: a third of the time matplotlib takes, which every predicted case pays."""
    ct, transform = _to_display(image, affine)
    seg, _ = _to_display(label, affine)
    shown_spacing, shown_point = [0.0] * 3, [0] * 3
    for axis, (target, flip) in enumerate(transform):
        target = int(target)
        shown_spacing[target] = float(spacing[axis])
        shown_point[target] = int(point[axis]) if flip > 0 else label.shape[axis] - 1 - int(point[axis])
    foreground = [(n, v) for n, v in sorted(labels.items(), key=lambda item: item[1]) if v > 0]
    low, high = CT_WINDOW_HU
    views = []
    for name, fixed, (rows, columns), letters in VIEWS:
        plane_ct = _plane(ct, fixed, shown_point[fixed], rows, columns)
        plane_seg = _plane(seg, fixed, shown_point[fixed], rows, columns)
        height_mm, width_mm = plane_ct.shape[0] * shown_spacing[rows], plane_ct.shape[1] * shown_spacing[columns]
        scale = VIEW_PIXELS / max(height_mm, width_mm)  # pixels per mm
        size = (max(1, int(round(height_mm * scale))), max(1, int(round(width_mm * scale))))
        pick_rows = np.minimum((np.arange(size[0]) + 0.5) / scale / shown_spacing[rows], plane_ct.shape[0] - 1)
        pick_cols = np.minimum((np.arange(size[1]) + 0.5) / scale / shown_spacing[columns], plane_ct.shape[1] - 1)
        pick = np.ix_(pick_rows.astype(int), pick_cols.astype(int))
        grey = np.clip((plane_ct[pick].astype(np.float32) - low) / (high - low) * 255, 0, 255).astype(np.uint8)
        picture = np.repeat(grey[..., None], 3, axis=2)
        plane_seg = plane_seg[pick]
        for i, (label_name, value) in enumerate(foreground):
            picture[_outline(plane_seg == value)] = _colour(label_name, i)
        drawing = Image.fromarray(picture)
        draw = ImageDraw.Draw(drawing)
        y = (shown_point[rows] + 0.5) * shown_spacing[rows] * scale
        x = (shown_point[columns] + 0.5) * shown_spacing[columns] * scale
        draw.line([(x - 7, y), (x + 7, y)], fill=MARK_COLOUR, width=1)
        draw.line([(x, y - 7), (x, y + 7)], fill=MARK_COLOUR, width=1)
        font = _font()
        # a dark rim keeps a letter readable over bone (only outline fonts can draw one)
        rim = {"stroke_width": 2, "stroke_fill": (0, 0, 0)} if isinstance(font, ImageFont.FreeTypeFont) else {}
        for (lx, ly), text in zip(((size[1] / 2, 10), (size[1] / 2, size[0] - 10), (10, size[0] / 2),
                                   (size[1] - 10, size[0] / 2)), letters):
            draw.text((lx, ly), text, fill=MARK_COLOUR, font=font, anchor="mm", **rim)
        buffer = io.BytesIO()
        drawing.save(buffer, format="PNG")
        views.append((name, buffer.getvalue()))
    return views


def _font():
    try:
        return ImageFont.load_default(size=15)
    except (TypeError, OSError):  # a Pillow without FreeType has only its small bitmap font
        return ImageFont.load_default()


def _ml(value: float) -> str:
    return f"{value:.1f}"


def _volume_rows(volumes: Dict[str, Dict[str, float]]) -> str:
    rows = [f"<tr><td>{html.escape(name)}</td><td>{_ml(v['right'])}</td><td>{_ml(v['left'])}</td>"
            f"<td>{_ml(v['total'])}</td></tr>" for name, v in volumes.items()]
    if len(volumes) > 1:  # the whole kidney as a clinician measures it: parenchyma plus its masses
        right, left = (sum(v[side] for v in volumes.values()) for side in ("right", "left"))
        rows.append(f"<tr class='sum'><td>all labelled (kidney with masses)</td><td>{_ml(right)}</td>"
                    f"<td>{_ml(left)}</td><td>{_ml(left + right)}</td></tr>")
    return "\n".join(rows)


def _definition_list(items: Sequence[Tuple[str, str]]) -> str:
    return "\n".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in items)


def render_report_page(report: dict, views: Sequence[Tuple[str, bytes]], focus: str,
                       settings: Optional[Sequence[Tuple[str, str]]] = None) -> str:
    """The HTML page of one case from its JSON report, the rendered views and the model/settings lines."""
    diameter = report.get("largest_tumor_diameter_mm")
    tumour_text = "no tumour found" if diameter is None else f"{diameter:.1f} mm"
    figures = "\n".join(
        f"<figure><img alt='{name} view' src='data:image/png;base64,{base64.b64encode(png).decode('ascii')}'>"
        f"<figcaption>{name}</figcaption></figure>" for name, png in views)
    spacing = " x ".join(f"{s:.3g}" for s in report["spacing_mm"])
    legend = " ".join(
        f"<span class='key' style='border-color:{OUTLINE_COLOURS.get(name.lower(), FALLBACK_COLOURS[i % 5])}'>"
        f"{html.escape(name)}</span>" for i, name in enumerate(report["volumes_ml"]))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>{html.escape(report['case_id'])}: kidney and kidney tumour segmentation</title>
<style>
body {{ font-family: Helvetica, Arial, sans-serif; margin: 18px 24px; color: #111; max-width: 1180px; }}
h1 {{ font-size: 20px; margin: 0 0 4px 0; }} h2 {{ font-size: 15px; margin: 16px 0 6px 0; }}
.note {{ color: #8a4b00; font-size: 12px; }} .small {{ color: #555; font-size: 12px; }}
table {{ border-collapse: collapse; font-size: 14px; }}
td, th {{ border: 1px solid #bbb; padding: 3px 10px; text-align: right; }}
td:first-child, th:first-child {{ text-align: left; }} tr.sum td {{ font-weight: bold; }}
.headline {{ font-size: 17px; margin: 8px 0; }}
.views {{ display: flex; gap: 10px; align-items: flex-start; flex-wrap: wrap; }}
figure {{ margin: 0; background: #000; }} figure img {{ display: block; width: 360px; }}
figcaption {{ color: #eee; font-size: 12px; padding: 2px 6px; }}
.key {{ border-left: 14px solid; padding-left: 5px; margin-right: 12px; font-size: 13px; }}
dl {{ display: grid; grid-template-columns: max-content auto; gap: 2px 14px; font-size: 12px; margin: 0; }}
dt {{ color: #555; }} dd {{ margin: 0; word-break: break-all; }}
</style></head><body>
<h1>Kidney and kidney tumour segmentation: {html.escape(report['case_id'])}</h1>
<div class="note">Automatic segmentation by a research model: check the outlines before relying on the numbers.</div>
<p class="headline">Largest tumour diameter: <b>{tumour_text}</b></p>
<h2>Volumes (mL)</h2>
<table><tr><th>structure</th><th>right</th><th>left</th><th>total</th></tr>
{_volume_rows(report['volumes_ml'])}
</table>
<p class="small">Sides: {html.escape(report.get('side_rule', ''))}. Diameter: the largest distance between two
points of the largest connected tumour.</p>
<h2>Slices through the {html.escape(focus)}</h2>
<div>{legend}<span class="small">yellow cross: the point the three slices share</span></div>
<div class="views">{figures}</div>
<h2>Image, model and settings</h2>
<dl>
{_definition_list([("image", str(report.get('image', ''))), ("voxel spacing (mm)", spacing)] + list(settings or []))}
</dl>
</body></html>
"""


def write_report_page(path, report: dict, image: np.ndarray, label: np.ndarray, meta: ImageMeta,
                      labels: Dict[str, int], settings: Optional[Sequence[Tuple[str, str]]] = None) -> None:
    """Render and write (atomically) the page of one case whose JSON ``report`` is built."""
    point, focus = focus_point(label, labels)
    views = render_views(image, label, meta.affine, meta.spacing, labels, point)
    atomic_write_text(path, render_report_page(report, views, focus, settings))

"""Refuse NIfTI geometry that cannot be read without guessing, and compare two files' voxel grids.

A NIfTI header states its geometry up to three times: ``pixdim`` (the voxel size, what
``header.get_zooms()`` returns and what this project uses as spacing), the qform (rotation + offset,
scaled by pixdim) and the sform (a free 3x4 matrix). nibabel picks one affine (sform if
``sform_code > 0``, else qform if ``qform_code > 0``, else a pixdim-only affine) and, while loading,
silently "fixes" a zero pixdim to 1, a negative one to its absolute value and an unknown transform
code to 0. A header whose statements disagree would therefore be read as *some* geometry (a volume off
by 14x, a left/right split on the wrong side); here it is refused instead, naming the file and the
disagreement.

What counts as consistent (so that real data keeps working):

* a qform alone, an sform alone, or both (the usual ITK/dcm2niix/KiTS output) are all fine; a transform
  whose code is 0 is ignored, as the NIfTI standard says;
* the affine in use must be finite and non-degenerate, and its column lengths (the distance between
  neighbouring voxel centres along each array axis) must equal pixdim within ``SPACING_RTOL``;
* with both codes > 0, qform and sform must describe the same grid (``geometry_difference``).

Tolerances cover float32 header storage, nothing more:

* ``SPACING_RTOL`` 1e-3 relative: float32 keeps ~7 digits, converters round spacings to ~6.
* ``DIRECTION_ATOL`` 2e-3 on the unit axis directions (0.11 degrees): the qform stores a rotation as a
  float32 quaternion whose first element is rebuilt as sqrt(1 - b^2 - c^2 - d^2); for rotations near
  180 degrees (KiTS19's orientation is one) that rounding alone moves direction cosines by up to ~1.2e-3.
  A flip or an axis swap changes them by 1 or more.
* ``ORIGIN_ATOL_VOXELS`` 1% of the smallest voxel side (8 micrometres for 0.8 mm voxels): float32
  origins of a few hundred mm are exact to ~3e-5 mm.
"""
from __future__ import annotations

import contextlib
import logging

import nibabel as nib
import numpy as np
from nibabel.openers import ImageOpener

from src.errors import UserError

SPACING_RTOL = 1e-3
DIRECTION_ATOL = 2e-3
ORIGIN_ATOL_VOXELS = 0.01
# |det| of the unit axis directions: 1 for orthogonal axes, 0 when they are coplanar. A 30 degree gantry
# tilt still gives 0.87; below 0.1 the axes are within ~6 degrees of a plane and no scanner writes that.
MIN_AXIS_INDEPENDENCE = 0.1
# NIfTI-1 transform codes: unknown, scanner, aligned, Talairach, MNI152, other template.
VALID_XFORM_CODES = (0, 1, 2, 3, 4, 5)


@contextlib.contextmanager
def quiet_header_fixes():
    """Silence the lines nibabel logs while "fixing" a header on load (``pixdim[1,2,3] should be
    non-zero; setting 0 dims to 1``): ``check_header_geometry`` judges those fields and refuses with one
    error line, so the user should not also see a message saying the value was quietly changed."""
    logger = nib.imageglobals.logger
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _mm(values) -> str:
    return "(" + ", ".join(f"{float(v):.6g}" for v in values) + ")"


def _stored_header(img, path, what: str):
    """The header exactly as stored: the fields nibabel's loader would have fixed are the ones to judge."""
    try:
        with ImageOpener(str(path)) as fileobj:
            return type(img.header).from_fileobj(fileobj, check=False)
    except Exception as err:  # nibabel/gzip raise many types for a file that changed or is corrupt
        raise UserError(f"cannot read the header of {what} {path}: {type(err).__name__}: {err}") from None


def _axis_independence(matrix: np.ndarray, lengths: np.ndarray) -> float:
    if not np.all(lengths > 0):
        return 0.0
    return float(abs(np.linalg.det(matrix / lengths)))


def check_header_geometry(img, path, what: str = "image") -> None:
    """Raise a UserError naming ``path`` unless the header of ``img`` (nibabel NIfTI image loaded from
    ``path``) states one consistent, usable geometry; see the module docstring for the rules."""
    name = f"{what} {path}"
    stored = _stored_header(img, path, what)
    sform_code, qform_code = int(stored["sform_code"]), int(stored["qform_code"])
    for field, code in (("sform_code", sform_code), ("qform_code", qform_code)):
        if code not in VALID_XFORM_CODES:
            raise UserError(f"{name} has an invalid {field} {code} (NIfTI defines 0-5), so it does not say "
                            f"which of its transforms places the voxels")
    source = "sform" if sform_code > 0 else "qform" if qform_code > 0 else "pixdim"
    pixdim = np.asarray(stored["pixdim"][1:4], dtype=np.float64)
    if source == "pixdim" and not (np.isfinite(pixdim).all() and np.all(pixdim > 0)):
        raise UserError(f"{name} has an invalid voxel spacing: pixdim {_mm(pixdim)} and neither an sform "
                        f"nor a qform (spacings must be finite and > 0)")
    affine = np.asarray(img.affine, dtype=np.float64)
    if not np.isfinite(affine).all():
        raise UserError(f"{name} has a non-finite {source} affine {affine[:3].tolist()}")
    matrix = affine[:3, :3]
    lengths = np.linalg.norm(matrix, axis=0)
    if _axis_independence(matrix, lengths) < MIN_AXIS_INDEPENDENCE:
        raise UserError(f"{name} has a singular (or nearly singular) {source} affine {affine[:3].tolist()}: "
                        f"its voxel axes are zero or (nearly) parallel")
    if not (np.isfinite(pixdim).all() and np.all(pixdim > 0)):
        raise UserError(f"{name} has an invalid voxel spacing: pixdim {_mm(pixdim)} vs {source} "
                        f"{_mm(lengths)} mm; refusing to guess which is right")
    if not np.allclose(pixdim, lengths, rtol=SPACING_RTOL, atol=0):
        raise UserError(f"{name} has inconsistent voxel spacing: pixdim {_mm(pixdim)} mm vs {source} "
                        f"{_mm(lengths)} mm; refusing to guess which is right")
    if sform_code > 0 and qform_code > 0:
        # img.header is the fixed copy: its qfac 0 already reads as 1, as the standard says.
        difference = geometry_difference(img.header.get_sform(), img.header.get_qform(), "sform", "qform")
        if difference:
            raise UserError(f"{name}: its sform and qform describe different geometries ({difference}); "
                            f"refusing to guess which is right")


def _axis_codes(directions: np.ndarray) -> str:
    try:
        return "".join(nib.aff2axcodes(np.vstack([np.column_stack([directions, np.zeros(3)]), [0, 0, 0, 1]])))
    except Exception:  # degenerate directions have no axis codes; the numbers still tell
        return "?"


def geometry_difference(affine, other, name: str = "", other_name: str = "") -> str | None:
    """How the voxel grids of two 4x4 affines differ (spacing, axis directions or origin, the first that
    exceeds its tolerance), as text for an error message; None when they describe the same grid."""
    a, b = np.asarray(affine, dtype=np.float64), np.asarray(other, dtype=np.float64)
    if a.shape != (4, 4) or b.shape != (4, 4):
        raise ValueError(f"affines must be 4x4, got {a.shape} and {b.shape}")
    name, other_name = (name + " ") if name else "", (other_name + " ") if other_name else ""
    for label, m in ((name, a), (other_name, b)):
        if not np.isfinite(m).all():
            return f"{label}affine is not finite".strip()
    spacing, other_spacing = np.linalg.norm(a[:3, :3], axis=0), np.linalg.norm(b[:3, :3], axis=0)
    if not (np.all(spacing > 0) and np.all(other_spacing > 0)) or \
            not np.allclose(spacing, other_spacing, rtol=SPACING_RTOL, atol=0):
        return f"{name}spacing {_mm(spacing)} mm vs {other_name}{_mm(other_spacing)} mm"
    directions, other_directions = a[:3, :3] / spacing, b[:3, :3] / other_spacing
    largest = float(np.abs(directions - other_directions).max())
    if not largest <= DIRECTION_ATOL:
        return (f"{name}axis directions {_axis_codes(directions)} vs {other_name}{_axis_codes(other_directions)} "
                f"(direction cosines differ by up to {largest:.3g})")
    origin, other_origin = a[:3, 3], b[:3, 3]
    if not np.abs(origin - other_origin).max() <= ORIGIN_ATOL_VOXELS * float(spacing.min()):
        return f"{name}origin {_mm(origin)} mm vs {other_name}{_mm(other_origin)} mm"
    return None

"""Images that are not NIfTI (NRRD and MHA files, DICOM series) in the project's NIfTI conventions.

Every reader here hands back what ``src.data.io`` hands back for a NIfTI file: the voxels in an array
whose axes are the file's storage axes, and an ``ImageMeta`` whose affine maps those array indices to RAS+
millimetres (nibabel's convention) and whose header is a NIfTI-1 header carrying that affine, so a
prediction is written back onto the input's grid by ``save_label`` exactly as for a NIfTI input.

ITK (SimpleITK) indexes an image (i, j, k) in storage order (i fastest) with LPS+ physical points
``origin + direction @ (spacing * index)``; nibabel's array of a NIfTI file is indexed in the same
storage order (ITK reads a NIfTI's dim1 as i). ``sitk.GetArrayFromImage`` returns (k, j, i), so the array
here is its transpose: an NRRD converted from a KiTS NIfTI file reads as (slice, row, column) like the
NIfTI does, array axis a is ITK axis a, and RAS+ is LPS+ with x and y negated.

Only single-file formats are read (``.nrrd``, ``.mha``): a detached header (``.nhdr``, ``.mhd``) would
leave its voxels out of the input's sha256 that predict.py's resume rule relies on.
"""
from __future__ import annotations

import base64
from pathlib import Path
from typing import Tuple

import nibabel as nib
import numpy as np

from src.data.geometry_checks import DIRECTION_ATOL, MIN_AXIS_INDEPENDENCE
from src.data.io import ITK_SUFFIXES, ImageMeta
from src.errors import UserError
from src.files import atomic_produce

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def nifti_header_for(affine, shape) -> nib.Nifti1Header:
    """A NIfTI-1 header stating ``affine`` (sform, and qform when the axes are orthogonal, both 'scanner'),
    the spacing as pixdim and millimetres as the unit, for an image of ``shape``."""
    affine = np.asarray(affine, dtype=np.float64)
    image = nib.Nifti1Image(np.zeros((1, 1, 1), np.uint8), None)
    header = image.header
    header.set_data_shape(tuple(int(n) for n in shape))
    header.set_sform(affine, code=1)
    directions = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    if np.allclose(directions.T @ directions, np.eye(3), atol=DIRECTION_ATOL):
        header.set_qform(affine, code=1)  # a qform can only hold a rotation; without one, sform alone
    else:
        header.set_qform(None, code=0)
    header.set_zooms(tuple(float(z) for z in np.linalg.norm(affine[:3, :3], axis=0)))
    header.set_xyzt_units("mm", "sec")
    return header


def meta_from_affine(affine, shape, source) -> ImageMeta:
    """ImageMeta of an array of ``shape`` placed by the RAS+ ``affine`` (array index order)."""
    affine = np.asarray(affine, dtype=np.float64)
    header = nifti_header_for(affine, shape)
    return ImageMeta(spacing=tuple(float(z) for z in np.linalg.norm(affine[:3, :3], axis=0)),
                     shape=tuple(int(n) for n in shape), affine=affine.tolist(),
                     header_b64=base64.b64encode(header.binaryblock).decode("ascii"), source=str(source))


def affine_from_itk(spacing, origin, direction) -> np.ndarray:
    """RAS+ affine of the (i, j, k) array of an ITK image with this spacing, origin and direction."""
    direction = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = LPS_TO_RAS @ direction @ np.diag(np.asarray(spacing, dtype=np.float64))
    affine[:3, 3] = LPS_TO_RAS @ np.asarray(origin, dtype=np.float64)
    return affine


def itk_geometry(affine) -> Tuple[tuple, tuple, tuple]:
    """(spacing, origin, direction) for SimpleITK of the (i, j, k) array that ``affine`` places."""
    affine = np.asarray(affine, dtype=np.float64)
    columns = LPS_TO_RAS @ affine[:3, :3]
    spacing = np.linalg.norm(columns, axis=0)
    direction = columns / spacing
    origin = LPS_TO_RAS @ affine[:3, 3]
    return (tuple(float(s) for s in spacing), tuple(float(o) for o in origin),
            tuple(float(d) for d in direction.ravel()))


def load_itk_image(path) -> Tuple[np.ndarray, ImageMeta]:
    """Read a 3D scalar NRRD or MHA file: (float32 array in storage order (i, j, k), ImageMeta). Refuses with one
    line what it cannot place: not 3D, several components, non-positive or non-finite spacing, axes that
    are (nearly) parallel, NaN or infinite voxels."""
    import SimpleITK as sitk

    path = Path(path)
    if not path.is_file():
        raise UserError(f"image not found: {path}" if not path.exists() else f"image is not a file: {path}")
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as err:  # ITK's exception text spans many lines: its last non-empty one says why
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        raise UserError(f"cannot read image {path}: {lines[-1] if lines else 'unreadable'}") from None
    size = list(image.GetSize())
    if image.GetDimension() == 4 and size[3] == 1:  # as for NIfTI: a trailing singleton axis is a 3D volume
        image = image[:, :, :, 0]
    if image.GetDimension() != 3:
        raise UserError(f"image {path} must be a 3D volume, got {image.GetDimension()} dimensions {tuple(size)}")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise UserError(f"image {path} has {image.GetNumberOfComponentsPerPixel()} components per voxel; "
                        f"a CT volume has one")
    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)
    if not (np.isfinite(spacing).all() and np.all(spacing > 0)):
        raise UserError(f"image {path} has an invalid voxel spacing {tuple(spacing)} (must be finite and > 0)")
    affine = affine_from_itk(spacing, image.GetOrigin(), image.GetDirection())
    matrix = affine[:3, :3]
    if not np.isfinite(affine).all() or abs(np.linalg.det(matrix / np.linalg.norm(matrix, axis=0))) \
            < MIN_AXIS_INDEPENDENCE:
        raise UserError(f"image {path} has a degenerate direction matrix {image.GetDirection()}: its voxel axes "
                        f"are (nearly) parallel")
    array = np.ascontiguousarray(sitk.GetArrayFromImage(image).transpose(2, 1, 0), dtype=np.float32)
    if not np.isfinite(array).all():
        raise UserError(f"image {path} contains NaN or infinite values")
    return array, meta_from_affine(affine, array.shape, path)


def save_label_itk(array, meta: ImageMeta, path) -> None:
    """Write a uint8 label map on ``meta``'s grid as NRRD or MHA (by ``path``'s suffix), compressed,
    atomically."""
    import SimpleITK as sitk

    array = np.asarray(array)
    if tuple(array.shape) != tuple(meta.shape):
        raise ValueError(f"label shape {array.shape} does not match the image shape {meta.shape}")
    if array.size and (array.min() < 0 or array.max() > 255):
        raise ValueError(f"label values must fit uint8, got {array.min()}..{array.max()}")
    image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0), dtype=np.uint8))
    spacing, origin, direction = itk_geometry(meta.affine)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    suffix = next(s for s in ITK_SUFFIXES if str(path).endswith(s))
    # ITK picks its writer by the file name, so the temporary keeps the suffix
    atomic_produce(path, lambda tmp: sitk.WriteImage(image, str(tmp), True), suffix=suffix)

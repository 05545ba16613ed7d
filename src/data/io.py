"""Raw image I/O: NIfTI read (checked) and label writing; NRRD/MHA files and DICOM series folders are
read by ``image_formats`` and ``dicom_series`` in the same conventions, this module only dispatches to
them (imported when needed: pydicom is optional). Where the cases of a dataset folder are is
``layouts``'s business.

Arrays keep the storage order nibabel reads (``np.asanyarray(img.dataobj)``) and spacings come from
``header.get_zooms()`` in that order, so a KiTS volume is (slice, row, column) everywhere.
"""
from __future__ import annotations

import base64
import gzip
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from src.data.geometry_checks import check_header_geometry, geometry_difference, quiet_header_fixes
from src.errors import UserError
from src.files import atomic_write

NIFTI_SUFFIXES = (".nii.gz", ".nii")
ITK_SUFFIXES = (".nrrd", ".mha")  # read by image_formats.py


def is_itk_path(path: Path) -> bool:
    return path.name.endswith(ITK_SUFFIXES)


@dataclass(frozen=True)
class ImageMeta:
    """Geometry of a raw image, enough to write a prediction back with the source's affine and header."""

    spacing: tuple
    shape: tuple
    affine: list
    header_b64: str
    source: str

    def to_json(self) -> dict:
        return {
            "spacing": [float(s) for s in self.spacing],
            "shape": [int(s) for s in self.shape],
            "affine": [[float(v) for v in row] for row in self.affine],
            "header_b64": self.header_b64,
            "source": self.source,
        }

    @classmethod
    def from_json(cls, d: dict) -> "ImageMeta":
        return cls(
            spacing=tuple(float(s) for s in d["spacing"]),
            shape=tuple(int(s) for s in d["shape"]),
            affine=[[float(v) for v in row] for row in d["affine"]],
            header_b64=str(d["header_b64"]),
            source=str(d["source"]),
        )


def voxel_volume_ml(spacing) -> float:
    """Volume of one voxel in millilitres, from its spacing in mm (any axis order)."""
    return float(np.prod(np.asarray(spacing, dtype=np.float64))) / 1000.0


def _open_nifti(path, what: str):
    """Open a 3D NIfTI file (header only, voxels stay on disk) whose header geometry passes
    ``check_header_geometry``; returns (nibabel image, 3D shape)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{what} not found: {path}")
    if not path.is_file():
        raise UserError(f"{what} is not a file: {path}")
    try:
        with quiet_header_fixes():
            img = nib.load(str(path))
        if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
            raise ValueError(f"not a NIfTI image ({type(img).__name__})")
    except Exception as err:  # nibabel/gzip/zlib raise many types for truncated or corrupt files
        raise UserError(f"cannot read {what} {path}: {type(err).__name__}: {err}") from None
    shape = _volume_shape(img.shape, path, what)  # first: a 2D file's pixdim[3] means nothing
    check_header_geometry(img, path, what)
    return img, shape


def _volume_shape(shape, path, what: str) -> tuple:
    shape = tuple(int(n) for n in shape)
    # Some converters write 3D volumes as 4D with a trailing singleton axis.
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) != 3:
        raise UserError(f"{what} {path} must be a 3D volume, got shape {shape}")
    if min(shape) < 1:
        raise UserError(f"{what} {path} is empty (shape {shape})")
    return shape


def _read_nifti(path, what: str):
    """Open and fully read a NIfTI file; returns (nibabel image, 3D float32-or-int array)."""
    img, shape = _open_nifti(path, what)
    try:
        array = np.asanyarray(img.dataobj)
    except Exception as err:  # a header that reads but voxel data that is truncated or corrupt
        raise UserError(f"cannot read {what} {path}: {type(err).__name__}: {err}") from None
    return img, array.reshape(shape)


def _meta_from_image(img, shape, path) -> ImageMeta:
    # check_header_geometry has made sure these are finite, positive and agree with the affine.
    spacing = tuple(float(z) for z in img.header.get_zooms()[:3])
    return ImageMeta(
        spacing=spacing,
        shape=tuple(int(s) for s in shape),
        affine=np.asarray(img.affine, dtype=np.float64).tolist(),
        header_b64=base64.b64encode(img.header.binaryblock).decode("ascii"),
        source=str(path),
    )


def read_geometry(path, what: str = "image") -> ImageMeta:
    """The checked geometry of a NIfTI file from its header alone (no voxel data is read)."""
    img, shape = _open_nifti(path, what)
    return _meta_from_image(img, shape, path)


def load_image(path, series=None):
    """Read a CT volume: (float32 array in storage order, ImageMeta). A folder is a DICOM series
    (``series``: its SeriesInstanceUID when the folder holds several), .nrrd/.mha go through ITK."""
    from src.data.dicom_series import holds_dicom, load_series
    if holds_dicom(path):
        return load_series(path, series)
    if is_itk_path(Path(path)):
        from src.data.image_formats import load_itk_image
        return load_itk_image(path)
    img, raw = _read_nifti(path, "image")
    array = raw.astype(np.float32)  # dataobj already applied scl_slope/scl_inter
    # Integers always convert to finite float32; float64 values beyond float32's range become inf.
    if raw.dtype.kind not in "iub" and not np.isfinite(array).all():
        raise UserError(f"image {path} contains NaN or infinite values")
    return array, _meta_from_image(img, array.shape, path)


def load_label(path, like: ImageMeta) -> np.ndarray:
    """Read a segmentation as int16; it must lie on the voxel grid of ``like`` (its image: same shape,
    and spacing, axis directions and origin within ``geometry_checks``' tolerances) and hold
    non-negative integers."""
    img, raw = _read_nifti(path, "label")
    if tuple(raw.shape) != tuple(like.shape):
        raise UserError(
            f"label {path} has shape {tuple(raw.shape)} but its image {like.source} has {tuple(like.shape)}")
    difference = geometry_difference(img.affine, like.affine, "label", "image")
    if difference:
        raise UserError(f"label {path} does not lie on the voxel grid of its image {like.source}: {difference}")
    if raw.dtype.kind == "f":
        if not np.isfinite(raw).all():
            raise UserError(f"label {path} contains NaN or infinite values")
        if not np.array_equal(raw, np.round(raw)):
            raise UserError(f"label {path} contains non-integer values")
    if raw.size and (raw.min() < 0 or raw.max() > np.iinfo(np.int16).max):
        raise UserError(f"label {path} has values outside 0..{np.iinfo(np.int16).max}")
    return raw.astype(np.int16)


def _header_from_b64(header_b64: str):
    block = base64.b64decode(header_b64)
    header_class = nib.Nifti2Header if len(block) == nib.Nifti2Header.template_dtype.itemsize \
        else nib.Nifti1Header
    return header_class(binaryblock=block), header_class


def save_label(array, meta: ImageMeta, path) -> None:
    """Write a uint8 label NIfTI carrying the source image's exact header (qform, sform, codes).

    Streamed: nibabel writes the voxels a plane at a time through gzip into the temporary file, so a
    1000 x 512 x 512 label costs no full-size copy (neither a Fortran-ordered one nor the file's bytes)."""
    array = np.asarray(array)
    if tuple(array.shape) != tuple(meta.shape):
        raise ValueError(f"label shape {array.shape} does not match the image shape {meta.shape}")
    if array.size and (array.min() < 0 or array.max() > 255):
        raise ValueError(f"label values must fit uint8, got {array.min()}..{array.max()}")
    header, header_class = _header_from_b64(meta.header_b64)
    header.set_data_dtype(np.uint8)
    # The CT's display window would hide a 0..3 label map in viewers.
    header["cal_min"] = 0
    header["cal_max"] = 0
    image_class = nib.Nifti2Image if header_class is nib.Nifti2Header else nib.Nifti1Image
    # affine=None keeps the header's qform/sform untouched instead of re-deriving them.
    image = image_class(array.astype(np.uint8, copy=False), None, header=header)

    def write(handle):
        if str(path).endswith(".gz"):
            with gzip.GzipFile(fileobj=handle, mode="wb", compresslevel=1) as packed:
                image.to_file_map({"image": nib.FileHolder(fileobj=packed), "header": nib.FileHolder(fileobj=packed)})
        else:
            image.to_file_map({"image": nib.FileHolder(fileobj=handle), "header": nib.FileHolder(fileobj=handle)})

    atomic_write(path, write)

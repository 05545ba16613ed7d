"""Raw NIfTI I/O and dataset layouts (KiTS19, KiTS21, MSD/nnU-Net, MOTS, flat folder, single file).
NRRD/MHA files and DICOM series folders are read by ``image_formats`` and ``dicom_series`` in the same
conventions; this module only dispatches to them (imported when needed: pydicom is optional).

Arrays keep the storage order nibabel reads (``np.asanyarray(img.dataobj)``) and spacings come from
``header.get_zooms()`` in that order, so a KiTS volume is (slice, row, column) everywhere.
"""
from __future__ import annotations

import base64
import gzip
import re
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from src.data.geometry_checks import check_header_geometry, geometry_difference, quiet_header_fixes
from src.errors import UserError
from src.files import atomic_write, file_digest, read_json

NIFTI_SUFFIXES = (".nii.gz", ".nii")
ITK_SUFFIXES = (".nrrd", ".mha")  # read by image_formats.py
KITS_IMAGE = "imaging.nii.gz"
KITS19_LABEL = "segmentation.nii.gz"
KITS21_LABEL = "aggregated_MAJ_seg.nii.gz"
MOTS_INDEX = "mots.json"
MSD_INDEX = "dataset.json"
MSD_CHANNEL_SUFFIX = "_0000"

KITS19_LABELS = {"background": 0, "kidney": 1, "tumor": 2}
KITS21_LABELS = {"background": 0, "kidney": 1, "tumor": 2, "cyst": 3}
# DoDNet's partially labelled tasks all use 1 = organ, 2 = tumour (tasks without an organ label only 2).
MOTS_DEFAULT_LABELS = {"background": 0, "organ": 1, "tumor": 2}


# ---------------------------------------------------------------- images and labels

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
    if _is_itk(Path(path)):
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


# ---------------------------------------------------------------- dataset layouts

@dataclass(frozen=True)
class CaseFiles:
    case_id: str
    image: Path
    label: Path | None
    task_id: int | None = None
    series: str | None = None  # DICOM: the SeriesInstanceUID read from the folder ``image``


def case_image_digest(case: CaseFiles) -> str:
    """sha256 of the case's input image: its file, or the files of its DICOM series."""
    if case.image.is_dir():
        from src.data.dicom_series import series_digest
        return series_digest(case.image, case.series)
    return file_digest(case.image)


def _is_nifti(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and path.name.endswith(NIFTI_SUFFIXES)


def _is_itk(path: Path) -> bool:
    return path.name.endswith(ITK_SUFFIXES)


def _strip_nifti_suffix(name: str) -> str:
    for suffix in NIFTI_SUFFIXES + ITK_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _kits_case_folders(raw: Path) -> list[Path]:
    """Candidate KiTS case folders: RAW itself when it is one case (holds imaging.nii.gz), else the
    sub-folders of RAW or of the KiTS repository's RAW/data; empty when RAW is no KiTS folder."""
    if (raw / KITS_IMAGE).is_file():
        return [raw]
    for root in (raw, raw / "data"):
        if root.is_dir():
            folders = sorted(c for c in root.iterdir() if c.is_dir() and not c.name.startswith("."))
            if any((folder / KITS_IMAGE).exists() for folder in folders):
                return folders
    return []


def detect_layout(raw) -> str:
    """One of: single, mots, msd, kits21, kits19, flat, dicom."""
    raw = Path(raw)
    if not raw.exists():
        raise UserError(f"data path not found: {raw}")
    if raw.is_file():
        if not raw.name.endswith(NIFTI_SUFFIXES) and not _is_itk(raw):
            from src.data.dicom_series import is_dicom_file
            hint = "; a DICOM series is given as its folder" if is_dicom_file(raw) else ""
            raise UserError(f"not a NIfTI (.nii, .nii.gz), NRRD (.nrrd) or MHA (.mha) file: {raw}{hint}")
        return "single"
    if (raw / MOTS_INDEX).exists():
        return "mots"
    if (raw / MSD_INDEX).exists() or (raw / "imagesTr").is_dir():
        return "msd"
    kits_folders = _kits_case_folders(raw)
    if kits_folders:
        return "kits21" if any((folder / KITS21_LABEL).exists() for folder in kits_folders) else "kits19"
    if any(_is_nifti(child) or (child.is_file() and _is_itk(child)) for child in raw.iterdir()):
        return "flat"
    from src.data.dicom_series import holds_dicom
    if holds_dicom(raw):
        return "dicom"
    raise UserError(
        f"no cases found in {raw}: expected KiTS case folders (case_XXXXX/{KITS_IMAGE}), an MSD folder "
        f"({MSD_INDEX} + imagesTr/labelsTr), {MOTS_INDEX}, .nii.gz/.nrrd/.mha files or a DICOM series")


def _find_kits_cases(raw: Path, layout: str) -> list[CaseFiles]:
    cases = []
    for folder in _kits_case_folders(raw):
        image = folder / KITS_IMAGE
        labels = [folder / KITS21_LABEL, folder / KITS19_LABEL] if layout == "kits21" else [folder / KITS19_LABEL]
        label = next((p for p in labels if p.exists()), None)
        if not image.exists():
            if label is not None:
                raise UserError(f"case {folder.name}: {label.name} present but {image} is missing")
            continue
        cases.append(CaseFiles(folder.name, image, label))
    return cases


def _find_msd_cases(raw: Path) -> list[CaseFiles]:
    images_dir, labels_dir = raw / "imagesTr", raw / "labelsTr"
    if not images_dir.is_dir():
        raise UserError(f"MSD folder {raw} has no imagesTr/ folder")
    image_files = sorted(p for p in images_dir.iterdir() if _is_nifti(p))
    if not image_files:
        raise UserError(f"MSD folder {images_dir} holds no .nii.gz images")
    names = [_strip_nifti_suffix(p.name) for p in image_files]
    with_channel = all(re.search(r"_\d{4}$", n) for n in names) and any(n.endswith(MSD_CHANNEL_SUFFIX) for n in names)
    cases = []
    for path, name in zip(image_files, names):
        if with_channel:
            if not name.endswith(MSD_CHANNEL_SUFFIX):
                raise UserError(f"{path}: only single-channel CT is supported (found channel {name[-4:]})")
            name = name[: -len(MSD_CHANNEL_SUFFIX)]
        label = next((labels_dir / f"{name}{s}" for s in NIFTI_SUFFIXES if (labels_dir / f"{name}{s}").exists()),
                     None)
        if label is None:
            raise UserError(f"MSD case {name}: label {labels_dir / (name + '.nii.gz')} is missing")
        cases.append(CaseFiles(name, path, label))
    known = {c.case_id for c in cases}
    if labels_dir.is_dir():
        orphans = sorted(_strip_nifti_suffix(p.name) for p in labels_dir.iterdir()
                         if _is_nifti(p) and _strip_nifti_suffix(p.name) not in known)
        if orphans:
            raise UserError(f"MSD labels without an image in {images_dir}: {', '.join(orphans[:5])}")
    return cases


def _find_mots_cases(raw: Path) -> list[CaseFiles]:
    index = read_json(raw / MOTS_INDEX)
    if not isinstance(index, dict) or not isinstance(index.get("cases"), list):
        raise UserError(f"{raw / MOTS_INDEX} must hold a 'cases' list")
    cases = []
    for entry in index["cases"]:
        try:
            case_id, task_id = str(entry["case_id"]), int(entry["task_id"])
            image = raw / entry["image"]
            label = raw / entry["label"] if entry.get("label") else None
        except (KeyError, TypeError, ValueError) as err:
            raise UserError(f"{raw / MOTS_INDEX}: malformed case entry {entry!r} ({err})") from None
        if not image.exists():
            raise UserError(f"MOTS case {case_id}: image {image} is missing")
        if label is not None and not label.exists():
            raise UserError(f"MOTS case {case_id}: label {label} is missing")
        cases.append(CaseFiles(case_id, image, label, task_id))
    return cases


def _find_flat_cases(raw: Path) -> list[CaseFiles]:
    files = sorted(p for p in raw.iterdir() if _is_nifti(p) or (p.is_file() and _is_itk(p)))
    names = [_strip_nifti_suffix(p.name) for p in files]
    # nnU-Net style inputs (<id>_0000.nii.gz) keep their case id without the channel suffix.
    if names and all(n.endswith(MSD_CHANNEL_SUFFIX) for n in names):
        names = [n[: -len(MSD_CHANNEL_SUFFIX)] for n in names]
    return [CaseFiles(name, path, None) for name, path in zip(names, files)]


def find_cases(raw, series: str | None = None) -> list[CaseFiles]:
    """All cases under ``raw`` (any supported layout, or one KiTS case folder or file), sorted by case id.
    A DICOM folder is one case, its series (``series`` when it holds several) checked from the headers."""
    raw = Path(raw)
    layout = detect_layout(raw)
    if series is not None and layout != "dicom":
        raise UserError(f"--series picks a series of a DICOM folder; {raw} is a {layout} input")
    if layout == "dicom":
        from src.data.dicom_series import find_series_case
        cases = [find_series_case(raw, series)]
    elif layout == "single":
        # KiTS names every image imaging.nii.gz: its case id is the case folder's name.
        case_id = raw.resolve().parent.name if raw.name == KITS_IMAGE else ""
        cases = [CaseFiles(case_id or _strip_nifti_suffix(raw.name), raw, None)]
    elif layout == "mots":
        cases = _find_mots_cases(raw)
    elif layout == "msd":
        cases = _find_msd_cases(raw)
    elif layout in ("kits19", "kits21"):
        cases = _find_kits_cases(raw, layout)
    else:
        cases = _find_flat_cases(raw)
    if not cases:
        raise UserError(f"no cases found in {raw} ({layout} layout)")
    ids = [c.case_id for c in cases]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise UserError(f"duplicate case ids in {raw}: {', '.join(duplicates[:5])}")
    return sorted(cases, key=lambda c: c.case_id)


def _msd_labels(raw: Path) -> dict[str, int]:
    index = read_json(raw / MSD_INDEX)
    labels = index.get("labels") if isinstance(index, dict) else None
    if not isinstance(labels, dict) or not labels:
        raise UserError(f"{raw / MSD_INDEX} has no 'labels' mapping")
    try:
        if all(str(k).lstrip("-").isdigit() for k in labels):  # MSD / nnU-Net v1: {"0": "background"}
            mapping = {str(name): int(value) for value, name in labels.items()}
        else:  # nnU-Net v2: {"background": 0}
            mapping = {str(name): int(value) for name, value in labels.items()}
    except (TypeError, ValueError):
        raise UserError(f"{raw / MSD_INDEX}: labels must map names to single integers "
                        f"(region-based labels are not supported)") from None
    return dict(sorted(mapping.items(), key=lambda item: item[1]))


def dataset_labels(raw) -> dict[str, int]:
    """Label name -> value for a labelled dataset folder."""
    raw = Path(raw)
    layout = detect_layout(raw)
    if layout == "kits19":
        return dict(KITS19_LABELS)
    if layout == "kits21":
        return dict(KITS21_LABELS)
    if layout == "msd":
        if not (raw / MSD_INDEX).exists():
            raise UserError(f"MSD folder {raw} has no {MSD_INDEX} describing its labels")
        return _msd_labels(raw)
    if layout == "mots":
        labels = read_json(raw / MOTS_INDEX).get("labels")
        if labels is None:
            return dict(MOTS_DEFAULT_LABELS)
        try:
            return {str(k): int(v) for k, v in labels.items()}
        except (AttributeError, TypeError, ValueError):
            raise UserError(f"{raw / MOTS_INDEX}: 'labels' must map names to integers") from None
    raise UserError(f"{raw} is an unlabelled {layout} input; labels are only known for KiTS, MSD and MOTS folders")


def dataset_tasks(raw) -> dict[int, str] | None:
    """MOTS task id -> task name (from mots.json); None for single-task layouts."""
    raw = Path(raw)
    if detect_layout(raw) != "mots":
        return None
    tasks = read_json(raw / MOTS_INDEX).get("tasks", {})
    try:
        return {int(k): str(v) for k, v in sorted(tasks.items(), key=lambda item: int(item[0]))}
    except (AttributeError, TypeError, ValueError):
        raise UserError(f"{raw / MOTS_INDEX}: 'tasks' must map task ids to names") from None

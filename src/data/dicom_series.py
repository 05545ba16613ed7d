"""One CT series from a DICOM folder, read in the project's NIfTI conventions (see image_formats.py).

The headers (pydicom, voxels not read) decide everything before any compute: which series (a folder
holding several is refused unless ``--series UID`` names one), that it is CT, and its geometry. The
voxels are then read by SimpleITK's ImageSeriesReader in that order, as float32, so each file's own
RescaleSlope/RescaleIntercept turn its stored values into HU.

Array order: (slice, row, column), head first (slice 0 the most superior): the axis order and slice
order of the KiTS files (converted from DICOM that way) and the phantom, which the models are planned
on; a dcm2niix NIfTI of the same series would store (column, row, slice) instead. The affine is built
from the headers, not taken from ITK: ITK sets the slice direction to the image-plane normal whatever
order the files come in, which would place a head-first stack upside down.

Refused, with one line naming the folder and what is wrong (the array would otherwise be placed or
scaled wrongly):

- another modality than CT; a folder without DICOM images; an unknown ``--series``;
- images of different size, pixel spacing or orientation within the series; fewer than 2 images;
- gantry tilt: a non-zero GantryDetectorTilt, or slice positions that do not lie on the line along the
  plane normal (more than ``SHEAR_TOLERANCE`` of a pixel off it): ITK would read a sheared stack as a
  box;
- non-axial: a plane normal more than ``AXIAL_TOLERANCE_DEG`` away from the head-foot axis (the model
  was trained on axial stacks);
- two images at one position, missing slices (a gap that is a multiple of the usual step) and other
  non-uniform steps: beyond ``SPACING_RTOL`` of the median step (DICOM stores positions as decimal
  strings; 1 % of a 1 mm step is 10 micrometres, far above their rounding and far below a slice).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from src.data.image_formats import LPS_TO_RAS, meta_from_affine
from src.data.io import ImageMeta
from src.data.layouts import CaseFiles
from src.errors import UserError
from src.files import file_digest

INSTALL_HINT = "pip install -r requirements-dicom.txt"
AXIAL_TOLERANCE_DEG = 10.0
SHEAR_TOLERANCE = 0.05  # of the smaller pixel side
SPACING_RTOL = 0.01
GEOMETRY_ATOL = 1e-4  # direction cosines and pixel spacings that must agree between the images of a series


def require_pydicom(what: str):
    """pydicom, or one UserError line saying how to install the optional DICOM packages."""
    try:
        import pydicom
    except ImportError:
        raise UserError(f"{what} needs the optional DICOM packages (pydicom, highdicom): {INSTALL_HINT}") from None
    return pydicom


def is_dicom_file(path: Path) -> bool:
    """A DICOM Part 10 file: 128 bytes of preamble, then 'DICM' (no library needed to tell)."""
    if not path.is_file() or path.name.startswith("."):
        return False
    try:
        with open(path, "rb") as handle:
            return handle.read(132)[128:] == b"DICM"
    except OSError:
        return False


def holds_dicom(folder) -> bool:
    folder = Path(folder)
    return folder.is_dir() and any(is_dicom_file(child) for child in folder.iterdir())


@dataclass(frozen=True)
class Series:
    folder: Path
    uid: str
    files: Tuple[Path, ...]  # head first
    affine: np.ndarray  # RAS+, array order (slice, row, column)
    shape: Tuple[int, int, int]


_SCANS: Dict[tuple, dict] = {}  # a run reads one folder's headers several times (check, digest, load, SEG)


def _headers(folder: Path) -> Dict[str, List[Tuple[Path, object]]]:
    """SeriesInstanceUID -> [(file, header)] of the image files in ``folder`` (other DICOM files, such as a
    DICOMDIR or a structured report, have no pixel rows and are left out). Remembered while no file of the
    folder changes (name, inode, size and modification time)."""
    pydicom = require_pydicom(f"reading the DICOM folder {folder}")
    paths = sorted(p for p in folder.iterdir() if is_dicom_file(p))
    stats = [p.stat() for p in paths]
    key = (str(folder.resolve()),) + tuple((p.name, s.st_ino, s.st_size, s.st_mtime_ns) for p, s in zip(paths, stats))
    if key in _SCANS:
        return _SCANS[key]
    groups: Dict[str, List[Tuple[Path, object]]] = {}
    for path in paths:
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception as err:  # pydicom raises many types for a truncated or corrupt file
            raise UserError(f"cannot read DICOM file {path}: {type(err).__name__}: {err}") from None
        if "Rows" not in header or "SeriesInstanceUID" not in header:
            continue
        groups.setdefault(str(header.SeriesInstanceUID), []).append((path, header))
    if len(_SCANS) >= 4:
        _SCANS.clear()
    _SCANS[key] = groups
    return groups


def _describe(uid: str, items) -> str:
    header = items[0][1]
    description = str(header.get("SeriesDescription", "") or "").strip()
    return f"{uid} ({header.get('Modality', '?')}{', ' + repr(description) if description else ''}, " \
           f"{len(items)} image(s))"


def choose_series(folder, series: Optional[str] = None) -> Tuple[str, list]:
    """(series UID, its [(file, header)]) of the series in ``folder``: the only one, or ``series``."""
    folder = Path(folder)
    groups = _headers(folder)
    if not groups:
        raise UserError(f"{folder} holds no DICOM images")
    if series is not None:
        if series not in groups:
            raise UserError(f"--series {series} is not in {folder}, which holds: "
                            + "; ".join(_describe(uid, items) for uid, items in sorted(groups.items())))
        return series, groups[series]
    if len(groups) > 1:
        raise UserError(f"{folder} holds {len(groups)} DICOM series: "
                        + "; ".join(_describe(uid, items) for uid, items in sorted(groups.items()))
                        + "; choose one with --series UID")
    (uid, items), = groups.items()
    return uid, items


def _floats(header, keyword: str, count: int, name: str) -> np.ndarray:
    value = header.get(keyword)
    try:
        values = np.asarray([float(v) for v in (value if count > 1 else [value])], dtype=np.float64)
    except (TypeError, ValueError):
        values = np.empty(0)
    if values.shape != (count,) or not np.isfinite(values).all():
        raise UserError(f"{name}: {keyword} is missing or malformed ({value!r})")
    return values


def check_series(folder, uid: str, items: list) -> Series:
    """The geometry of one series from its headers, or a UserError for what the module docstring lists."""
    name = f"DICOM series {uid} in {folder}"
    modalities = sorted({str(header.get("Modality", "") or "none") for _, header in items})
    if modalities != ["CT"]:
        raise UserError(f"{name} is {'/'.join(modalities)}, not CT; the model segments CT only")
    if any(int(header.get("NumberOfFrames", 1) or 1) > 1 for _, header in items):
        raise UserError(f"{name} is a multi-frame (enhanced) image; only series of single-frame images are read")
    if len(items) < 2:
        raise UserError(f"{name} has {len(items)} image; a volume needs at least 2")
    sizes = {(int(header.Rows), int(header.Columns)) for _, header in items}
    if len(sizes) > 1:
        raise UserError(f"{name} mixes image sizes {sorted(sizes)}")
    orientations = np.array([_floats(h, "ImageOrientationPatient", 6, name) for _, h in items])
    pixels = np.array([_floats(h, "PixelSpacing", 2, name) for _, h in items])
    positions = np.array([_floats(h, "ImagePositionPatient", 3, name) for _, h in items])
    if np.ptp(orientations, axis=0).max() > GEOMETRY_ATOL or np.ptp(pixels, axis=0).max() > GEOMETRY_ATOL:
        raise UserError(f"{name} mixes image orientations or pixel spacings")
    if np.any(pixels[0] <= 0):
        raise UserError(f"{name} has a non-positive PixelSpacing {tuple(pixels[0])}")
    row_dir, col_dir = orientations[0, :3], orientations[0, 3:]
    normal = np.cross(row_dir, col_dir)
    if abs(np.linalg.norm(row_dir) - 1) > 1e-3 or abs(np.linalg.norm(col_dir) - 1) > 1e-3 \
            or abs(np.linalg.norm(normal) - 1) > 1e-3:
        raise UserError(f"{name} has an ImageOrientationPatient that is not two perpendicular unit vectors "
                        f"{tuple(orientations[0])}")
    tilts = {float(_floats(h, "GantryDetectorTilt", 1, name)[0]) if h.get("GantryDetectorTilt") not in (None, "")
             else 0.0 for _, h in items}
    if any(abs(t) > 1e-6 for t in tilts):
        raise UserError(f"{name} was acquired with a gantry tilt of {max(tilts, key=abs):g} degrees; "
                        f"resample it to an untilted stack first")
    along = positions @ normal
    off_line = positions - positions[:1] - np.outer(along - along[0], normal)
    drift = float(np.linalg.norm(off_line, axis=1).max())
    if drift > SHEAR_TOLERANCE * float(pixels[0].min()):
        raise UserError(f"{name}: its slice positions drift {drift:.3g} mm off the image-plane normal "
                        f"(a gantry tilt or sheared stack); resample it to an untilted stack first")
    angle = float(np.degrees(np.arccos(min(1.0, abs(normal[2])))))
    if angle > AXIAL_TOLERANCE_DEG:
        raise UserError(f"{name} is not axial: its image planes are {angle:.0f} degrees from the axial plane "
                        f"(orientation {tuple(np.round(orientations[0], 3))})")
    # head first: descending along the head-foot (LPS +z) component of the normal
    order = np.argsort(-along * np.sign(normal[2]), kind="stable")
    steps = np.abs(np.diff(along[order]))
    step = float(np.median(steps))
    if steps.min() <= SPACING_RTOL * max(step, 1e-6):
        k = int(np.argmin(steps))
        raise UserError(f"{name} has two images at one position ({items[order[k]][0].name} and "
                        f"{items[order[k + 1]][0].name}); it may mix two acquisitions")
    worst = int(np.argmax(np.abs(steps - step)))
    if abs(steps[worst] - step) > SPACING_RTOL * step:
        where = f"between {items[order[worst]][0].name} and {items[order[worst + 1]][0].name}"
        ratio = steps[worst] / step
        if ratio > 1.5 and abs(ratio - round(ratio)) <= SPACING_RTOL * round(ratio):
            raise UserError(f"{name} is missing {int(round(ratio)) - 1} slice(s) {where} (a gap of "
                            f"{steps[worst]:.4g} mm where slices are {step:.4g} mm apart)")
        raise UserError(f"{name} is not uniformly spaced: a step of {steps[worst]:.4g} mm {where}, "
                        f"{step:.4g} mm elsewhere")
    files = tuple(items[i][0] for i in order)
    first, last = positions[order[0]], positions[order[-1]]
    lps = np.column_stack([(last - first) / (len(files) - 1), col_dir * pixels[0, 0], row_dir * pixels[0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = LPS_TO_RAS @ lps  # array axes: slice (head first), row (PixelSpacing[0]), column
    affine[:3, 3] = LPS_TO_RAS @ first
    rows, columns = sizes.pop()
    return Series(Path(folder), uid, files, affine, (len(files), rows, columns))


def read_series(folder, series: Optional[str] = None) -> Series:
    """The checked series of ``folder`` (headers only)."""
    uid, items = choose_series(folder, series)
    return check_series(Path(folder), uid, items)


def find_series_case(folder, series: Optional[str] = None) -> CaseFiles:
    """predict.py's one case for a DICOM folder (the series checked now, before any model loads); its id is
    the folder's name."""
    folder = Path(folder)
    found = read_series(folder, series)
    return CaseFiles(folder.resolve().name, folder, None, series=found.uid)


def load_series(folder, series: Optional[str] = None) -> Tuple[np.ndarray, ImageMeta]:
    """(float32 HU array (slice, row, column), ImageMeta) of the series."""
    import SimpleITK as sitk

    found = read_series(folder, series)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(path) for path in found.files])
    reader.SetOutputPixelType(sitk.sitkFloat32)  # each file's rescale applied in float, none truncated
    try:
        array = sitk.GetArrayFromImage(reader.Execute())
    except RuntimeError as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        raise UserError(f"cannot read the voxels of DICOM series {found.uid} in {folder}: "
                        f"{lines[-1] if lines else 'unreadable'}") from None
    if array.shape != found.shape:
        raise UserError(f"DICOM series {found.uid} in {folder} reads as {array.shape}, its headers say "
                        f"{found.shape}")
    if not np.isfinite(array).all():
        raise UserError(f"DICOM series {found.uid} in {folder} contains NaN or infinite values")
    return array, meta_from_affine(found.affine, array.shape, folder)


def series_digest(folder, series: Optional[str] = None) -> str:
    """``sha256:<hex>`` over the series' files (names and bytes, head first): what predict.py records as the
    input's identity, so a changed, added or removed slice makes a finished case count as another input."""
    found = read_series(folder, series)
    digest = hashlib.sha256()
    for path in found.files:
        digest.update(f"{path.name}\0{file_digest(path)}\n".encode())
    return "sha256:" + digest.hexdigest()

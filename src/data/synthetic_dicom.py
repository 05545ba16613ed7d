"""Synthetic CT DICOM series made from the phantom (never patient data), for tests and the demo.

``write_ct_series`` writes a (slice, row, column) HU volume as one CT series of single-frame files,
slice 0 the most superior (the project's head-first order, the same as the KiTS files): with the
default orientation the phantom's frame (rows towards the back, columns towards the patient's left,
slices towards the feet) is DICOM's standard axial LPS one, so the series reads back to the array and
affine the phantom's KiTS19 NIfTI file has (up to the origin). Its keyword arguments damage the series
the way scanners and archives do (another modality, a gantry tilt, a missing slice, per-slice rescale
values, shuffled file names), which is what the readers' refusals are tested against.

``write_synthetic_dicom`` is ``prepare.py synth --format dicom``: case i is the phantom of KiTS19
synthetic case i of the same seed, one series folder per case.
"""
from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from src.errors import UserError
from src.files import atomic_write_bytes, atomic_write_text

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
SYNTHETIC_NAME = "SYNTHETIC^PHANTOM"
README_NAME = "SYNTHETIC_README.txt"


def _uid(*parts) -> str:
    """A UID derived from ``parts`` (same inputs, same UID, so a rewritten series keeps its identity)."""
    from pydicom.uid import generate_uid

    return str(generate_uid(entropy_srcs=[str(p) for p in parts]))


def _unit(vector) -> np.ndarray:
    vector = np.asarray(vector, dtype=np.float64)
    return vector / np.linalg.norm(vector)


def write_ct_series(folder, image_hu: np.ndarray, spacing: Sequence[float], *, seed: str = "0",
                    origin: Sequence[float] = (-100.0, -100.0, 50.0),
                    orientation: Sequence[float] = (1, 0, 0, 0, 1, 0), modality: str = "CT",
                    gantry_tilt_deg: float = 0.0, slopes: Optional[Sequence[float]] = None,
                    intercept: float = -1024.0, skip_slices: Sequence[int] = (), shuffle: bool = True,
                    series_description: str = "synthetic phantom CT", patient_id: str = "PHANTOM0",
                    study_uid: Optional[str] = None, prefix: str = "IM") -> list[Path]:
    """Write ``image_hu`` (slice, row, column; HU) with ``spacing`` (slice, row, column mm) as a CT series
    in ``folder``; returns the written files.

    Slice k lies at ``origin - k * slice_spacing * normal`` (normal = row x column direction: slices run
    towards the feet for axial orientations). ``gantry_tilt_deg`` tilts the image planes about the
    left-right axis while the positions still step along the table, as a tilted gantry does.
    ``slopes`` gives each slice its own RescaleSlope (stored values change, HU stay the same);
    ``skip_slices`` leaves those slices out; ``shuffle`` names the files in an order unrelated to
    their positions, so readers must sort by position; ``prefix`` starts the file names (two series in one
    folder need two).
    """
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    image_hu = np.asarray(image_hu)
    slices, rows, columns = image_hu.shape
    row_dir, col_dir = _unit(orientation[:3]), _unit(orientation[3:])
    normal = np.cross(row_dir, col_dir)
    step = -float(spacing[0]) * normal
    if gantry_tilt_deg:
        angle = np.deg2rad(gantry_tilt_deg)
        col_dir = np.array([0.0, np.cos(angle), -np.sin(angle)])
        step = np.array([0.0, 0.0, -float(spacing[0]) / np.cos(angle)])  # the table moves along z only
    study_uid = study_uid or _uid("study", patient_id, seed)
    series_uid = _uid("series", patient_id, seed, series_description)
    frame_uid = _uid("frame", patient_id, seed)
    stream = np.random.default_rng(int(hashlib.sha256(seed.encode()).hexdigest()[:8], 16))
    order = stream.permutation(slices) if shuffle else np.arange(slices)
    written = []
    for k in range(slices):
        if k in skip_slices:
            continue
        slope = float(slopes[k]) if slopes is not None else 1.0
        stored = np.round((image_hu[k].astype(np.float64) - intercept) / slope)
        stored = np.clip(stored, -32768, 32767).astype(np.int16)
        sop_uid = _uid("instance", series_uid, k)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CT_IMAGE_STORAGE, sop_uid
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = SYNTHETIC_NAME, patient_id, "", "O"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "1", "", ""
        ds.StudyDate, ds.StudyTime, ds.SeriesDate, ds.SeriesTime = "20000101", "000000", "20000101", "000000"
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = modality, 1, k + 1
        ds.Manufacturer, ds.SeriesDescription = "synthetic (src/data/synthetic_dicom.py)", series_description
        ds.StudyDescription = "SYNTHETIC phantom, not patient data"
        ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
        ds.ImageOrientationPatient = [float(v) for v in (*row_dir, *col_dir)]
        ds.ImagePositionPatient = [round(float(v), 6) for v in np.asarray(origin, dtype=np.float64) + k * step]
        ds.PixelSpacing = [float(spacing[1]), float(spacing[2])]  # row spacing, column spacing
        ds.SliceThickness = float(spacing[0])
        ds.GantryDetectorTilt = float(gantry_tilt_deg)
        ds.KVP, ds.PositionReferenceIndicator, ds.AcquisitionNumber, ds.BodyPartExamined = 120, "", 1, "ABDOMEN"
        ds.PatientPosition = "FFS" if normal[2] < 0 else "HFS"  # feet or head first, supine
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = rows, columns
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = slope, intercept, "HU"
        ds.WindowCenter, ds.WindowWidth = 40, 400
        ds.PixelData = stored.tobytes()
        buffer = io.BytesIO()
        pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
        path = folder / f"{prefix}{int(order[k]):05d}.dcm"
        atomic_write_bytes(path, buffer.getvalue())
        written.append(path)
    return written


def write_synthetic_dicom(out_dir, num_cases: int, seed: int, progress: bool = True) -> list[str]:
    """``prepare.py synth --format dicom``: ``OUT/case_XXXXX/`` holds one CT series per case, the phantom of
    KiTS19 synthetic case i of this seed; returns the case ids."""
    from tqdm import tqdm

    from src.data.dicom_series import require_pydicom
    from src.data.phantom import sample_phantom
    from src.data.synthetic import case_options

    require_pydicom("writing a synthetic DICOM series")
    if num_cases < 1 or seed < 0:
        raise UserError(f"need at least 1 case and a seed >= 0, got {num_cases} case(s), seed {seed}")
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / README_NAME).is_file())):
        raise UserError(f"synthetic output {out} exists and is not an earlier synthetic DICOM folder "
                        f"(no {README_NAME}); choose an empty or new folder")
    ids = []
    for index in tqdm(range(num_cases), desc="synthetic dicom", unit="case", disable=not progress):
        rng = np.random.default_rng([seed, index])  # the same stream as synthetic KiTS19 case i
        phantom = sample_phantom(rng, **case_options("kits19", index, rng))
        case_id = f"case_{index:05d}"
        folder = out / case_id
        for old in folder.glob("*.dcm") if folder.is_dir() else ():
            old.unlink()  # an earlier run's series of another size would mix into this one
        write_ct_series(folder, phantom.image, phantom.spacing, seed=f"{seed}-{index}",
                        patient_id=f"PHANTOM{index:05d}")
        ids.append(case_id)
    atomic_write_text(out / README_NAME, (
        "SYNTHETIC DATA - NOT PATIENT IMAGES\n\n"
        f"{num_cases} synthetic abdominal CT phantoms as DICOM CT series (one folder per case), written by\n"
        f"src/data/synthetic_dicom.py (python prepare.py synth --format dicom --cases {num_cases} --seed {seed}).\n"
        "Case i is the phantom of the KiTS19 synthetic case i of the same seed (its labels are there).\n"))
    return ids

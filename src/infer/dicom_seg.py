"""predict.py's DICOM-SEG output: the label map as a DICOM Segmentation (highdicom) of its source series.

One binary segment per foreground label, in label-value order, each with SNOMED CT coded terms a viewer
(3D Slicer, OHIF, a PACS) shows and a query can find:

- kidney: category Anatomical Structure (91723000), type Kidney (64033007);
- tumour: category Morphologically Abnormal Structure (49755003), type Neoplasm (108369006), in the
  kidney (anatomic region 64033007);
- cyst (KiTS21): the same category, type Cyst (367643001), in the kidney;
- any other name (MOTS/MSD models): Anatomical Structure / Organ (91772007), the name as its label.

The segmentation references every image of the series (frame k of the label map is image k of
``dicom_series``' head-first order), carries the series' patient, study and frame of reference, and is
marked AUTOMATIC with the model files' sha256 as the algorithm version. Its own UIDs are derived from the
source series and the model, so the same input and model give the same series UID.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Dict, Optional

import numpy as np

from src.data.dicom_series import INSTALL_HINT, read_series, require_pydicom
from src.errors import UserError
from src.files import atomic_write_bytes

MANUFACTURER = "kitseg (MindSpore nnU-Net-style kidney and kidney tumour segmentation)"
SOFTWARE_VERSION = "1"
# RGB display colours, the overlay PNG's outline colours
COLOURS = {"kidney": (0, 255, 0), "tumor": (255, 0, 0), "tumour": (255, 0, 0), "cyst": (0, 191, 255)}


def require_highdicom(what: str):
    require_pydicom(what)
    try:
        import highdicom
    except ImportError:
        raise UserError(f"{what} needs the optional DICOM packages (pydicom, highdicom): {INSTALL_HINT}") from None
    return highdicom


def _coded_terms(name: str):
    """(category, type, anatomic regions) of a label name, from pydicom's SNOMED CT code dictionary."""
    from pydicom.sr.codedict import codes

    key = name.lower()
    if key in ("tumor", "tumour") or "tumo" in key:
        return codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Neoplasm, [codes.SCT.Kidney]
    if "cyst" in key:
        return codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Cyst, [codes.SCT.Kidney]
    if "kidney" in key:
        return codes.SCT.AnatomicalStructure, codes.SCT.Kidney, None
    return codes.SCT.AnatomicalStructure, codes.SCT.Organ, None


def segment_values(labels: Dict[str, int]) -> Dict[int, str]:
    """Segment number (1, 2, ...) -> label name, foreground labels in value order."""
    foreground = sorted((value, name) for name, value in labels.items() if value > 0)
    return {number: name for number, (_, name) in enumerate(foreground, start=1)}


def write_dicom_seg(path, label: np.ndarray, series_folder, series_uid: Optional[str], labels: Dict[str, int],
                    model_version: str, model_name: str = "kitseg U-Net") -> None:
    """Write ``label`` (slice, row, column on the series' grid, values of ``labels``) as a DICOM-SEG of the
    series ``series_uid`` in ``series_folder``, atomically."""
    hd = require_highdicom("--output_format dicom_seg")
    import pydicom
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    series = read_series(series_folder, series_uid)
    label = np.asarray(label)
    if tuple(label.shape) != tuple(series.shape):
        raise ValueError(f"label shape {label.shape} does not match the series {series.shape}")
    numbers = segment_values(labels)
    value_of = {name: value for name, value in labels.items()}
    lookup = np.zeros(max(256, int(label.max()) + 1), dtype=np.uint8)
    for number, name in numbers.items():
        lookup[value_of[name]] = number
    sources = [pydicom.dcmread(p, stop_before_pixels=True) for p in series.files]
    algorithm = hd.AlgorithmIdentificationSequence(name=model_name[:64], family=codes.cid7162.ArtificialIntelligence,
                                                   version=model_version[:64])
    descriptions = []
    for number, name in numbers.items():
        category, kind, regions = _coded_terms(name)
        colour = COLOURS.get(name.lower())
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=name, segmented_property_category=category,
            segmented_property_type=kind, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm, anatomic_regions=regions,
            display_color=hd.color.CIELabColor.from_rgb(*colour) if colour else None))
    seed = [series.uid, model_version]
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=lookup[label], segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=generate_uid(entropy_srcs=seed + ["series"]),
        series_number=900, sop_instance_uid=generate_uid(entropy_srcs=seed + ["instance"]), instance_number=1,
        manufacturer=MANUFACTURER[:64], manufacturer_model_name=model_name[:64], software_versions=SOFTWARE_VERSION,
        device_serial_number="0", content_label="KIDNEYS", content_description="automatic kidney segmentation",
        series_description="kidney / tumour segmentation (automatic)")
    buffer = io.BytesIO()
    seg.save_as(buffer)
    atomic_write_bytes(path, buffer.getvalue())


def read_dicom_seg(path, series_folder, series_uid: Optional[str], labels: Dict[str, int]) -> np.ndarray:
    """A DICOM-SEG written by ``write_dicom_seg`` back as a label map on the series' grid (uint8, values of
    ``labels`` by segment label); a segment whose label is not in ``labels`` is refused."""
    hd = require_highdicom(f"reading the DICOM-SEG {path}")
    import pydicom

    series = read_series(series_folder, series_uid)
    seg = hd.seg.segread(str(path))
    uids = [str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in series.files]
    combined = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, combine_segments=True)
    label = np.zeros(series.shape, dtype=np.uint8)
    for number in seg.get_segment_numbers():
        name = seg.get_segment_description(number).segment_label
        if name not in labels:
            raise UserError(f"{Path(path)}: segment {number} {name!r} is none of the labels {sorted(labels)}")
        label[combined == number] = labels[name]
    return label

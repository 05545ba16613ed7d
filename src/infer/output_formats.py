"""predict.py's ``--output_format``: which file a case's labels go to, and the writer of each format.

- ``nifti`` (default): ``<case>.nii.gz`` with the input's shape and affine (a NIfTI input's own header);
- ``nrrd``: ``<case>.nrrd`` (gzip), the same grid in ITK's LPS terms (image_formats.py);
- ``dicom_seg``: ``<case>_seg.dcm``, a DICOM Segmentation of the input series (dicom_seg.py). It
  references the input's images, so it needs a DICOM series as input: any other input is refused before
  the model loads, with one line, as is a missing highdicom.

The writer is chosen by the label file's name, so a case's targets say everything the writer needs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Sequence

from src.data.io import ImageMeta, save_label

from src.data.layouts import CaseFiles
from src.errors import UserError

LABEL_SUFFIXES = {"nifti": ".nii.gz", "dicom_seg": "_seg.dcm", "nrrd": ".nrrd"}
OUTPUT_FORMATS = tuple(LABEL_SUFFIXES)


def label_file_name(case_id: str, output_format: str = "nifti") -> str:
    if output_format not in LABEL_SUFFIXES:
        raise UserError(f"unknown --output_format {output_format!r}; expected one of {', '.join(OUTPUT_FORMATS)}")
    return case_id + LABEL_SUFFIXES[output_format]


def check_output_format(cases: Sequence[CaseFiles], output_format: str) -> None:
    """Refuse, before any output is touched, a format these inputs cannot have or this machine cannot write."""
    label_file_name("x", output_format)
    if output_format != "dicom_seg":
        return
    from src.infer.dicom_seg import require_highdicom

    not_series = [case for case in cases if not (case.image.is_dir() and case.series)]
    if not_series:
        raise UserError(f"--output_format dicom_seg needs a DICOM series as input (a DICOM-SEG references the "
                        f"images it segments); {not_series[0].image} is not one: use nifti or nrrd for it")
    require_highdicom("--output_format dicom_seg")


def write_label(path, case: CaseFiles, label, meta: ImageMeta, labels: Dict[str, int], identity: dict,
                model_name: str = "kitseg U-Net") -> None:
    """Write the case's label map to ``path`` in the format its name says, atomically."""
    name = Path(path).name
    if name.endswith(LABEL_SUFFIXES["dicom_seg"]):
        from src.infer.dicom_seg import write_dicom_seg

        version = " ".join(digest.split(":")[-1][:12] for digest in identity["models"])
        write_dicom_seg(path, label, case.image, case.series, labels, model_version=version, model_name=model_name)
    elif name.endswith(LABEL_SUFFIXES["nrrd"]):
        from src.data.image_formats import save_label_itk

        save_label_itk(label, meta, path)
    else:
        save_label(label, meta, path)

"""Fault rows for predict.py on DICOM series: ambiguous, incomplete or unsupported series, and the
optional packages missing.

Each row: (workspace, its own tmp folder) -> (script, argv, what the error line must name)."""
import nibabel as nib
import numpy as np

from tests.fault_rows.predicting import predict


def hides(*modules):
    """Mark a row that runs as if these optional packages were not installed."""
    def mark(row):
        row.hidden_modules = modules
        return row
    return mark


def _series(ws, folder, **damage):
    """The workspace's first raw case as a DICOM CT series in ``folder`` (``damage``: write_ct_series')."""
    from src.data.synthetic_dicom import write_ct_series

    image = nib.load(ws / "raw" / "case_00000" / "imaging.nii.gz")
    write_ct_series(folder, np.asanyarray(image.dataobj), image.header.get_zooms(), **damage)
    return folder


def _predict_dicom(ws, tmp, folder, *extra):
    return predict(ws, folder, tmp / "out", *extra)


def predict_dicom_folder_of_two_series(ws, tmp):
    _series(ws, tmp / "ct", series_description="arterial")
    _series(ws, tmp / "ct", series_description="venous", seed="1", prefix="VEN")
    return (*_predict_dicom(ws, tmp, tmp / "ct"), "--series UID")


def predict_dicom_series_that_is_not_in_the_folder(ws, tmp):
    return (*_predict_dicom(ws, tmp, _series(ws, tmp / "ct"), "--series", "1.2.3.4"), "1.2.3.4")


def predict_dicom_series_missing_a_slice(ws, tmp):
    return (*_predict_dicom(ws, tmp, _series(ws, tmp / "ct", skip_slices=(6,))), "missing 1 slice")


def predict_dicom_series_not_ct(ws, tmp):
    return (*_predict_dicom(ws, tmp, _series(ws, tmp / "ct", modality="MR")), "not CT")


def predict_dicom_series_gantry_tilted(ws, tmp):
    return (*_predict_dicom(ws, tmp, _series(ws, tmp / "ct", gantry_tilt_deg=15.0)), "gantry tilt")


def predict_dicom_series_not_axial(ws, tmp):
    return (*_predict_dicom(ws, tmp, _series(ws, tmp / "ct", orientation=(1, 0, 0, 0, 0, -1))), "not axial")


@hides("pydicom")
def predict_dicom_without_the_dicom_packages(ws, tmp):
    return (*_predict_dicom(ws, tmp, _series(ws, tmp / "ct")), "requirements-dicom.txt")


@hides("highdicom")
def predict_dicom_seg_without_highdicom(ws, tmp):
    return (*_predict_dicom(ws, tmp, _series(ws, tmp / "ct"), "--output_format", "dicom_seg"),
            "requirements-dicom.txt")


def predict_dicom_seg_of_a_nifti_input(ws, tmp):
    return (*_predict_dicom(ws, tmp, ws / "raw", "--output_format", "dicom_seg"), "needs a DICOM series")


ROWS = [
    predict_dicom_folder_of_two_series, predict_dicom_series_that_is_not_in_the_folder,
    predict_dicom_series_missing_a_slice, predict_dicom_series_not_ct, predict_dicom_series_gantry_tilted,
    predict_dicom_series_not_axial, predict_dicom_without_the_dicom_packages, predict_dicom_seg_without_highdicom,
    predict_dicom_seg_of_a_nifti_input,
]

"""DICOM series, NRRD and MHA inputs: read in the NIfTI conventions, or refused with one line."""
import sys

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from src.data.dicom_series import read_series
from src.data.image_formats import save_label_itk
from src.data.io import load_image, read_geometry, save_label
from src.data.layouts import find_cases
from src.data.phantom import sample_phantom
from src.data.synthetic_dicom import write_ct_series
from src.errors import UserError

SPACING = (4.0, 5.0, 5.5)  # slice, row, column: all different, so a swapped axis shows


@pytest.fixture(scope="module")
def phantom():
    p = sample_phantom(np.random.default_rng(0), "kits21", spacing=SPACING, shape=(16, 20, 24), tumours=1, cysts=1)
    return p.image, p.labels("kits21")


def stored_hu(image, slopes, intercept=-1024.0):
    """The HU a series holds after the writer's integer storage with these per-slice slopes."""
    slopes = np.asarray(slopes, dtype=np.float64)[:, None, None]
    return (np.round((image - intercept) / slopes) * slopes + intercept).astype(np.float32)


def lps_position(affine, index):
    """The LPS point (DICOM's patient coordinates) of an array index under a RAS+ affine."""
    return np.diag([-1, -1, 1]) @ (np.asarray(affine)[:3, :3] @ np.asarray(index, float) + np.asarray(affine)[:3, 3])


def test_series_reads_back_as_written_with_rescale_and_head_first_order(phantom, tmp_path):
    image, _ = phantom
    slopes = [1.0 + 0.5 * (k % 3) for k in range(len(image))]  # each file its own RescaleSlope
    files = write_ct_series(tmp_path / "ct", image, SPACING, slopes=slopes, shuffle=True)
    assert sorted(p.name for p in files) != [p.name for p in files]  # names unrelated to positions
    (case,) = find_cases(tmp_path / "ct")
    assert case.case_id == "ct" and case.series == str(pydicom.dcmread(files[0]).SeriesInstanceUID)
    array, meta = load_image(case.image, case.series)
    np.testing.assert_array_equal(array, stored_hu(image, slopes))
    assert meta.spacing == pytest.approx(SPACING)
    # the phantom's frame is the KiTS19 files' one: slices to the feet, rows to the back, columns to the left
    assert nib.aff2axcodes(np.array(meta.affine)) == ("I", "P", "L")
    for path in files:  # every voxel lies where its file says
        header = pydicom.dcmread(path)
        k = int(header.InstanceNumber) - 1
        np.testing.assert_allclose(lps_position(meta.affine, (k, 0, 0)), header.ImagePositionPatient, atol=1e-6)
        np.testing.assert_allclose(lps_position(meta.affine, (k, 1, 1)) - lps_position(meta.affine, (k, 0, 0)),
                                   [SPACING[2], SPACING[1], 0], atol=1e-9)


def test_feet_first_series_is_read_head_first_at_the_same_places(phantom, tmp_path):
    image, _ = phantom
    # patient feet first: the row direction flips, so the plane normal points to the feet and the
    # writer's slice k lies k steps towards the head
    write_ct_series(tmp_path / "ct", image, SPACING, orientation=(-1, 0, 0, 0, 1, 0))
    array, meta = load_image(tmp_path / "ct")
    np.testing.assert_array_equal(array, stored_hu(image[::-1], [1.0] * len(image)))
    assert nib.aff2axcodes(np.array(meta.affine))[0] == "I"
    header = pydicom.dcmread(sorted((tmp_path / "ct").iterdir())[0])
    k = len(image) - int(header.InstanceNumber)
    np.testing.assert_allclose(lps_position(meta.affine, (k, 0, 0)), header.ImagePositionPatient, atol=1e-6)


def test_a_dicom_input_writes_nifti_and_nrrd_on_its_own_grid(phantom, tmp_path):
    image, label = phantom
    write_ct_series(tmp_path / "ct", image, SPACING)
    _, meta = load_image(tmp_path / "ct")
    save_label(label, meta, tmp_path / "ct.nii.gz")
    written = read_geometry(tmp_path / "ct.nii.gz", "label")  # passes the NIfTI header checks
    np.testing.assert_allclose(written.affine, meta.affine, atol=1e-4)
    np.testing.assert_array_equal(np.asanyarray(nib.load(tmp_path / "ct.nii.gz").dataobj), label)
    save_label_itk(label, meta, tmp_path / "ct.nrrd")
    nrrd = sitk.ReadImage(str(tmp_path / "ct.nrrd"))  # ITK index (i, j, k) = the array's axes, as for NIfTI
    np.testing.assert_array_equal(sitk.GetArrayFromImage(nrrd).transpose(2, 1, 0), label)
    first = pydicom.dcmread(read_series(tmp_path / "ct").files[0])
    np.testing.assert_allclose(nrrd.GetOrigin(), first.ImagePositionPatient, atol=1e-9)
    for index in [(0, 0, 0), (3, 7, 11), (15, 19, 23)]:
        np.testing.assert_allclose(nrrd.TransformIndexToPhysicalPoint(index), lps_position(meta.affine, index),
                                   atol=1e-9)
    assert not list(tmp_path.glob("*.tmp-*"))


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_nrrd_and_mha_read_exactly_as_their_nifti(tmp_path, suffix):
    # KiTS19's storage: (slice, row, column) with its all-negated, slice-first affine, and a moved origin
    affine = np.array([[0, 0, -0.8, 12.5], [0, -0.7, 0, -30], [-3.0, 0, 0, 101], [0, 0, 0, 1]])
    image = np.random.default_rng(0).normal(0, 300, (12, 20, 24)).round().astype(np.int16)
    nifti = tmp_path / "imaging.nii.gz"
    nib.save(nib.Nifti1Image(image, affine), nifti)
    flat = tmp_path / "flat"
    flat.mkdir()
    sitk.WriteImage(sitk.ReadImage(str(nifti)), str(flat / f"patient{suffix}"))
    (case,) = find_cases(flat)
    assert case.case_id == "patient" and find_cases(case.image)[0].case_id == "patient"
    array, meta = load_image(case.image)
    expected, expected_meta = load_image(nifti)
    np.testing.assert_array_equal(array, expected)
    np.testing.assert_allclose(meta.affine, expected_meta.affine, atol=1e-5)
    assert meta.spacing == pytest.approx(expected_meta.spacing)
    # written back onto its own grid, the label reads as the NIfTI input's grid again
    label = (expected > 0).astype(np.uint8)
    save_label_itk(label, meta, tmp_path / f"label{suffix}")
    back, back_meta = load_image(tmp_path / f"label{suffix}")
    np.testing.assert_array_equal(back, label)
    np.testing.assert_allclose(back_meta.affine, expected_meta.affine, atol=1e-5)


def _two_series(folder, image):
    write_ct_series(folder, image, SPACING, series_description="arterial")
    write_ct_series(folder, image[:, ::-1], SPACING, series_description="venous", seed="1", prefix="VEN")
    return sorted({str(pydicom.dcmread(p).SeriesInstanceUID) for p in folder.iterdir()})


def test_a_folder_of_several_series_needs_one_chosen(phantom, tmp_path):
    image, _ = phantom
    uids = _two_series(tmp_path / "ct", image)
    with pytest.raises(UserError, match=r"holds 2 DICOM series.*'arterial'.*--series UID"):
        find_cases(tmp_path / "ct")
    for uid in uids:
        (case,) = find_cases(tmp_path / "ct", series=uid)
        array, _ = load_image(case.image, case.series)
        assert array.shape == image.shape
    with pytest.raises(UserError, match="--series 1.2.3 is not in"):
        find_cases(tmp_path / "ct", series="1.2.3")
    nib.save(nib.Nifti1Image(image, np.eye(4)), tmp_path / "ct.nii.gz")
    with pytest.raises(UserError, match="--series picks a series of a DICOM folder"):
        find_cases(tmp_path / "ct.nii.gz", series=uids[0])


def _shift_one_position(folder, by):
    path = sorted(folder.iterdir())[3]
    header = pydicom.dcmread(path)
    header.ImagePositionPatient = [float(v) + d for v, d in zip(header.ImagePositionPatient, by)]
    header.save_as(path)


@pytest.mark.parametrize("damage, message", [
    (dict(modality="MR"), "is MR, not CT"),
    (dict(skip_slices=(5,)), "is missing 1 slice"),
    (dict(skip_slices=(5, 6)), "is missing 2 slice"),
    (dict(gantry_tilt_deg=12.0), "gantry tilt of 12 degrees"),
    (dict(orientation=(1, 0, 0, 0, 0, -1)), "is not axial: its image planes are 90 degrees"),
    ("uneven", "not uniformly spaced"),
    ("sheared", "drift"),
])
def test_series_that_would_be_read_wrongly_are_refused(phantom, tmp_path, damage, message):
    image, _ = phantom
    folder = tmp_path / "ct"
    if damage == "uneven":
        write_ct_series(folder, image, SPACING)
        _shift_one_position(folder, (0, 0, 1.3))
    elif damage == "sheared":  # a tilted stack whose header does not say so
        write_ct_series(folder, image, SPACING, gantry_tilt_deg=5.0)
        for path in folder.iterdir():
            header = pydicom.dcmread(path)
            header.GantryDetectorTilt = 0
            header.save_as(path)
    else:
        write_ct_series(folder, image, SPACING, **damage)
    with pytest.raises(UserError, match=message) as info:
        find_cases(folder)
    assert "\n" not in str(info.value) and str(folder) in str(info.value)


def test_dicom_without_the_optional_packages_is_one_line(phantom, tmp_path, monkeypatch):
    image, _ = phantom
    write_ct_series(tmp_path / "ct", image, SPACING)
    monkeypatch.setitem(sys.modules, "pydicom", None)  # as if requirements-dicom.txt were not installed
    with pytest.raises(UserError, match=r"needs the optional DICOM packages.*pip install -r requirements-dicom.txt"):
        find_cases(tmp_path / "ct")


def test_a_single_dicom_file_points_to_its_folder(phantom, tmp_path):
    image, _ = phantom
    files = write_ct_series(tmp_path / "ct", image, SPACING)
    with pytest.raises(UserError, match="a DICOM series is given as its folder"):
        find_cases(files[0])


def test_prepare_synth_dicom_is_the_kits19_phantom_of_the_same_seed(tmp_path, capsys):
    from src.data.synthetic import write_synthetic_dataset
    from tests.helpers import load_script

    load_script("prepare").main(["synth", "--format", "dicom", "--cases", "1", "--out", str(tmp_path / "dicom"),
                                 "--seed", "49"])  # seed 49: a small case (40 x 101 x 101)
    assert "wrote 1 synthetic CT DICOM series" in capsys.readouterr().out
    write_synthetic_dataset(tmp_path / "kits19", "kits19", 1, 49, progress=False)
    (case,) = find_cases(tmp_path / "dicom" / "case_00000")
    array, meta = load_image(case.image, case.series)
    expected, expected_meta = load_image(tmp_path / "kits19" / "case_00000" / "imaging.nii.gz")
    np.testing.assert_array_equal(array, expected)
    np.testing.assert_allclose(np.array(meta.affine)[:3, :3], np.array(expected_meta.affine)[:3, :3], atol=1e-6)
    assert pydicom.dcmread(read_series(case.image).files[0]).PatientName == "SYNTHETIC^PHANTOM"
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("a user's file")
    with pytest.raises(SystemExit):
        load_script("prepare").main(["synth", "--format", "dicom", "--cases", "1", "--out", str(tmp_path / "mine")])
    assert "not an earlier synthetic DICOM folder" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]

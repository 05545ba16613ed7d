"""DICOM-SEG output: it references its source series, codes its segments, and reads back voxel for voxel."""
import sys

import numpy as np
import pydicom
import pytest

from src.data.io import load_image

from src.data.layouts import CaseFiles, find_cases
from src.data.phantom import sample_phantom
from src.data.synthetic_dicom import write_ct_series
from src.errors import UserError
from src.infer.dicom_seg import read_dicom_seg, write_dicom_seg
from src.infer.output_formats import check_output_format
from tests.infer.tiny_model import tiny_plan, write_tiny_checkpoint

KITS21 = {"background": 0, "kidney": 1, "tumor": 2, "cyst": 3}
SPACING = (4.0, 5.0, 5.5)


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    """A shuffled, per-slice-rescaled CT series of a KiTS21 phantom, and the phantom's labels."""
    folder = tmp_path_factory.mktemp("dicom") / "ct"
    p = sample_phantom(np.random.default_rng(1), "kits21", spacing=SPACING, shape=(16, 20, 24), tumours=1, cysts=1)
    write_ct_series(folder, p.image, SPACING, slopes=[1.0 + (k % 2) for k in range(16)])
    label = p.labels("kits21")
    assert set(np.unique(label)) == {0, 1, 2, 3}
    return folder, label


def test_segmentation_reads_back_voxel_for_voxel_and_references_the_series(series, tmp_path):
    folder, label = series
    write_dicom_seg(tmp_path / "ct_seg.dcm", label, folder, None, KITS21, model_version="0123abcd")
    np.testing.assert_array_equal(read_dicom_seg(tmp_path / "ct_seg.dcm", folder, None, KITS21), label)

    seg = pydicom.dcmread(tmp_path / "ct_seg.dcm")
    sources = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(folder.iterdir())]
    assert seg.Modality == "SEG" and seg.SegmentationType == "BINARY"
    assert seg.StudyInstanceUID == sources[0].StudyInstanceUID and seg.PatientID == sources[0].PatientID
    assert seg.FrameOfReferenceUID == sources[0].FrameOfReferenceUID
    (referenced,) = seg.ReferencedSeriesSequence
    assert referenced.SeriesInstanceUID == sources[0].SeriesInstanceUID
    assert {item.ReferencedSOPInstanceUID for item in referenced.ReferencedInstanceSequence} == \
        {s.SOPInstanceUID for s in sources}
    coded = [(s.SegmentLabel, s.SegmentedPropertyCategoryCodeSequence[0].CodeValue,
              s.SegmentedPropertyTypeCodeSequence[0].CodeValue,
              s.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator, s.SegmentAlgorithmType)
             for s in seg.SegmentSequence]
    assert coded == [("kidney", "91723000", "64033007", "SCT", "AUTOMATIC"),
                     ("tumor", "49755003", "108369006", "SCT", "AUTOMATIC"),
                     ("cyst", "49755003", "367643001", "SCT", "AUTOMATIC")]
    assert seg.SegmentSequence[1].AnatomicRegionSequence[0].CodeValue == "64033007"  # a tumour of the kidney


def test_kits19_labels_give_two_segments_and_an_empty_map_still_writes(series, tmp_path):
    folder, label = series
    kits19 = {"background": 0, "kidney": 1, "tumor": 2}
    two = np.minimum(label, 2)
    write_dicom_seg(tmp_path / "a.dcm", two, folder, None, kits19, model_version="v")
    assert [s.SegmentLabel for s in pydicom.dcmread(tmp_path / "a.dcm").SegmentSequence] == ["kidney", "tumor"]
    np.testing.assert_array_equal(read_dicom_seg(tmp_path / "a.dcm", folder, None, kits19), two)
    empty = np.zeros_like(label)
    write_dicom_seg(tmp_path / "b.dcm", empty, folder, None, kits19, model_version="v")
    np.testing.assert_array_equal(read_dicom_seg(tmp_path / "b.dcm", folder, None, kits19), empty)
    assert not list(tmp_path.glob("*.tmp-*"))


def test_dicom_seg_needs_a_series_input_and_highdicom(series, tmp_path, monkeypatch):
    folder, _ = series
    (case,) = find_cases(folder)
    check_output_format([case], "dicom_seg")
    nifti_case = CaseFiles("patient", tmp_path / "patient.nii.gz", None)
    with pytest.raises(UserError, match=r"dicom_seg needs a DICOM series as input.*patient.nii.gz"):
        check_output_format([case, nifti_case], "dicom_seg")
    check_output_format([nifti_case], "nrrd")
    monkeypatch.setitem(sys.modules, "highdicom", None)  # as if requirements-dicom.txt were not installed
    with pytest.raises(UserError, match=r"dicom_seg needs the optional DICOM packages.*requirements-dicom.txt"):
        check_output_format([case], "dicom_seg")


def threshold_predictor():
    """The real Predictor (sliding windows, stitching) around a network that needs no MindSpore: kidney
    where the normalized CT is bright, tumour where it is brighter, so the labels depend on the image."""
    from src.infer.predictor import Predictor

    def net(batch):
        x = batch[:, 0]
        return np.stack([np.zeros_like(x), 4 * (x - 0.3), 8 * (x - 1.0)], axis=1).astype(np.float32)

    return Predictor([net], tiny_plan(), ["threshold network"], mirror=False, progress=False)


@pytest.fixture
def predict(tmp_path, monkeypatch, capsys):
    """Run predict.py on ``--input`` with the threshold network; returns the labels each run handed to its
    writer (by output format) and the output folder."""
    from src.infer import output_formats, predict_cases
    from tests.helpers import load_script

    (tmp_path / "model.ckpt").write_bytes(b"identified by its sha256 only")
    (tmp_path / "cfg.yaml").write_text("device_target: CPU\ntta_mirror: false\npostprocess: none\n")
    monkeypatch.setattr(predict_cases, "load_model", lambda *args: threshold_predictor())
    written = {}
    real_write_label = output_formats.write_label

    def spy(path, case, label, *args, **kwargs):
        written[path.name] = np.array(label)
        return real_write_label(path, case, label, *args, **kwargs)

    monkeypatch.setattr("src.infer.prediction_outputs.write_label", spy)

    def run(folder, output_format, expect="wrote 1 prediction(s)", into=None):
        out = tmp_path / (into or output_format)
        load_script("predict").main(["--config", str(tmp_path / "cfg.yaml"), "--ckpt", str(tmp_path / "model.ckpt"),
                                     "--input", str(folder), "--output", str(out), "--output_format", output_format])
        assert expect in capsys.readouterr().out
        return out, written
    return run


def test_predict_writes_a_dicom_seg_that_reads_back_onto_the_series(series, predict):
    """predict.py end to end: DICOM series in, DICOM-SEG out, equal voxel for voxel to the labels the run
    computed; NIfTI and NRRD runs give the same labels on the same grid."""
    folder, _ = series
    out, written = predict(folder, "dicom_seg")
    assert sorted(p.name for p in out.iterdir()) == ["ct_overlay.png", "ct_report.html", "ct_report.json", "ct_seg.dcm"]
    computed = written["ct_seg.dcm"]
    assert set(np.unique(computed)) == {0, 1, 2}  # the threshold network finds all three classes
    labels = {"background": 0, "kidney": 1, "tumor": 2}
    np.testing.assert_array_equal(read_dicom_seg(out / "ct_seg.dcm", folder, None, labels), computed)

    out, _ = predict(folder, "nifti")
    label, meta = load_image(out / "ct.nii.gz")
    np.testing.assert_array_equal(label, computed)
    np.testing.assert_allclose(meta.affine, load_image(folder)[1].affine, atol=1e-4)
    out, _ = predict(folder, "nrrd")
    label, meta = load_image(out / "ct.nrrd")
    np.testing.assert_array_equal(label, computed)
    np.testing.assert_allclose(meta.affine, load_image(folder)[1].affine, atol=1e-9)


@pytest.mark.slow
def test_the_real_network_predicts_a_series_to_dicom_seg(series, tmp_path, capsys, restore_mode):
    from tests.helpers import load_script

    folder, _ = series
    ckpt = write_tiny_checkpoint(tmp_path / "model.ckpt")
    (tmp_path / "cfg.yaml").write_text("device_target: CPU\namp_level: O0\ntta_mirror: false\npostprocess: none\n")
    for output_format in ("dicom_seg", "nifti"):
        load_script("predict").main(["--config", str(tmp_path / "cfg.yaml"), "--ckpt", str(ckpt), "--input",
                                     str(folder), "--output", str(tmp_path / output_format),
                                     "--output_format", output_format])
    labels = {"background": 0, "kidney": 1, "tumor": 2}
    np.testing.assert_array_equal(read_dicom_seg(tmp_path / "dicom_seg" / "ct_seg.dcm", folder, None, labels),
                                  load_image(tmp_path / "nifti" / "ct.nii.gz")[0])



def test_a_rerun_skips_the_finished_series_and_notices_a_changed_slice(series, predict, tmp_path, capsys):
    """The series' files are the input's identity: the same series is skipped, a changed slice makes it
    another input (refused without --overwrite), and so does another output format into the same folder."""
    import shutil

    folder = shutil.copytree(series[0], tmp_path / "ct")
    out, _ = predict(folder, "dicom_seg")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    predict(folder, "dicom_seg", expect="wrote 0 prediction(s), report(s), report page(s) and overlay(s) to "
                                        f"{out} (1 complete case(s) skipped)")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    changed = sorted(folder.iterdir())[2]
    header = pydicom.dcmread(changed)
    header.WindowWidth = 350  # any byte of any slice
    header.save_as(changed)
    with pytest.raises(SystemExit):
        predict(folder, "dicom_seg")
    assert "predicted from another version of" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        predict(folder, "nrrd", into="dicom_seg")
    assert "predicted with other settings (output_format)" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_an_nrrd_input_predicts_onto_its_own_grid(series, predict, tmp_path):
    """NRRD in (here: the series converted by ITK), NIfTI and NRRD out, both on the NRRD's grid."""
    import SimpleITK as sitk

    from src.data.image_formats import save_label_itk

    image, meta = load_image(series[0])
    (tmp_path / "scans").mkdir()
    save_label_itk(np.zeros(image.shape, np.uint8), meta, tmp_path / "grid.nrrd")  # the series' grid, in ITK terms
    grid = sitk.ReadImage(str(tmp_path / "grid.nrrd"))
    ct = sitk.GetImageFromArray(image.transpose(2, 1, 0))
    ct.CopyInformation(grid)
    sitk.WriteImage(ct, str(tmp_path / "scans" / "patient.nrrd"))
    out, written = predict(tmp_path / "scans" / "patient.nrrd", "nifti")
    label, label_meta = load_image(out / "patient.nii.gz")
    np.testing.assert_array_equal(label, written["patient.nii.gz"])
    np.testing.assert_allclose(label_meta.affine, meta.affine, atol=1e-4)
    out, _ = predict(tmp_path / "scans", "nrrd")
    label, label_meta = load_image(out / "patient.nrrd")
    np.testing.assert_array_equal(label, written["patient.nii.gz"])
    np.testing.assert_allclose(label_meta.affine, meta.affine, atol=1e-9)

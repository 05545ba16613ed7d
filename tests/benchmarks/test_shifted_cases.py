"""benchmarks/shifted_cases.py moves a case's in-plane content without losing labels, and refuses when it would."""
import nibabel as nib
import numpy as np
import pytest

from benchmarks.shifted_cases import main, shifted
from src.errors import UserError


def write_case(folder, seg):
    folder.mkdir(parents=True)
    image = np.where(seg > 0, 100, -50).astype(np.int16)
    affine = np.diag([3.0, 0.8, 0.8, 1.0])
    nib.save(nib.Nifti1Image(image, affine), str(folder / "imaging.nii.gz"))
    nib.save(nib.Nifti1Image(seg.astype(np.uint8), affine), str(folder / "segmentation.nii.gz"))


def test_shifted_moves_content_and_fills_the_side_it_leaves():
    volume = np.arange(2 * 4 * 5).reshape(2, 4, 5)
    out = shifted(volume, 1, -7)
    assert (out[:, 0, :] == -7).all() and (out[:, :, 0] == -7).all()
    np.testing.assert_array_equal(out[:, 1:, 1:], volume[:, :3, :4])


def test_cases_are_written_shifted_with_their_labels_and_geometry(tmp_path):
    seg = np.zeros((3, 12, 10), np.uint8)
    seg[1, 4:6, 3:5] = 1
    seg[2, 5, 4] = 2
    write_case(tmp_path / "in" / "case_00000", seg)
    main(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--voxels", "3"])
    moved = nib.load(str(tmp_path / "out" / "case_00000" / "segmentation.nii.gz"))
    image = nib.load(str(tmp_path / "out" / "case_00000" / "imaging.nii.gz"))
    np.testing.assert_array_equal(np.asarray(moved.dataobj)[:, 3:, 3:], seg[:, :9, :7])
    assert np.bincount(np.asarray(moved.dataobj).ravel()).tolist() == np.bincount(seg.ravel()).tolist()
    assert (np.asarray(image.dataobj)[:, :3, :] == -1024).all()
    np.testing.assert_allclose(moved.affine, np.diag([3.0, 0.8, 0.8, 1.0]), atol=1e-6)


def test_a_shift_that_would_cut_labels_is_refused(tmp_path):
    seg = np.zeros((2, 8, 8), np.uint8)
    seg[0, 7, 2] = 1
    write_case(tmp_path / "in" / "case_00000", seg)
    with pytest.raises(SystemExit) as stop:
        main(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--voxels", "2"])
    assert stop.value.code != 0
    assert not (tmp_path / "out" / "case_00000" / "imaging.nii.gz").exists()


def test_shift_case_raises_a_user_error_naming_the_case(tmp_path):
    from benchmarks.shifted_cases import shift_case
    seg = np.zeros((2, 8, 8), np.uint8)
    seg[0, 3, 7] = 2
    write_case(tmp_path / "case_00001", seg)
    with pytest.raises(UserError, match="case_00001"):
        shift_case(tmp_path / "case_00001", tmp_path / "out", 1)


def test_output_inside_the_input_is_refused_and_nothing_is_written(tmp_path):
    seg = np.zeros((2, 8, 8), np.uint8)
    seg[0, 2, 2] = 1
    write_case(tmp_path / "in" / "case_00000", seg)
    before = sorted(p.name for p in (tmp_path / "in").iterdir())
    for output in (tmp_path / "in", tmp_path / "in" / "shifted"):
        with pytest.raises(SystemExit) as stop:
            main(["--input", str(tmp_path / "in"), "--output", str(output), "--voxels", "1"])
        assert stop.value.code != 0
    assert sorted(p.name for p in (tmp_path / "in").iterdir()) == before


def test_a_case_whose_two_files_differ_in_shape_is_refused(tmp_path):
    seg = np.zeros((2, 8, 8), np.uint8)
    write_case(tmp_path / "case_00002", seg)
    nib.save(nib.Nifti1Image(np.zeros((2, 8, 9), np.uint8), np.eye(4)), str(tmp_path / "case_00002" / "segmentation.nii.gz"))
    from benchmarks.shifted_cases import shift_case
    with pytest.raises(UserError, match="not one 3-D grid"):
        shift_case(tmp_path / "case_00002", tmp_path / "out", 1)
    assert not (tmp_path / "out").exists()


def test_an_output_that_reaches_the_input_through_a_link_is_refused(tmp_path):
    # locate_dice.sh links the held-out case folders to the raw ones: that raw folder is an input too
    seg = np.zeros((2, 8, 8), np.uint8)
    seg[0, 2, 2] = 1
    write_case(tmp_path / "raw" / "case_00000", seg)
    (tmp_path / "heldout").mkdir()
    (tmp_path / "heldout" / "case_00000").symlink_to(tmp_path / "raw" / "case_00000")
    before = (tmp_path / "raw" / "case_00000" / "imaging.nii.gz").read_bytes()
    with pytest.raises(SystemExit) as stop:
        main(["--input", str(tmp_path / "heldout"), "--output", str(tmp_path / "raw"), "--voxels", "1"])
    assert stop.value.code != 0
    assert (tmp_path / "raw" / "case_00000" / "imaging.nii.gz").read_bytes() == before

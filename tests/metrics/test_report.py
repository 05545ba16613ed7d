"""Folder scoring (KiTS and flat layouts, errors naming the case) and the metrics.csv/summary.json files."""
import csv
import json

import nibabel as nib
import numpy as np
import pytest

from src.errors import UserError
from tests.data.test_io import flipped, shifted, write_header_variant
from src.metrics.kits import KITS21_COLUMNS, case_scores
from src.metrics.report import (SUMMARY_KEYS, find_references, score_folders, summarize,
                                write_metrics_csv, write_summary_json)

SPACING = (3.0, 0.8, 0.7)
SHAPE = (6, 16, 14)


def _labels(seed, with_cyst=False):
    rng = np.random.default_rng(seed)
    labels = np.zeros(SHAPE, np.uint8)
    lo = rng.integers(1, 3, 3)
    labels[lo[0]:lo[0] + 3, lo[1]:lo[1] + 9, lo[2]:lo[2] + 8] = 1
    labels[lo[0] + 1:lo[0] + 3, lo[1] + 2:lo[1] + 5, lo[2] + 2:lo[2] + 5] = 2
    if with_cyst:
        labels[lo[0], lo[1] + 6:lo[1] + 8, lo[2] + 5:lo[2] + 7] = 3
    return labels


def _save(array, path, spacing=SPACING, dtype=np.uint8):
    path.parent.mkdir(parents=True, exist_ok=True)
    # KiTS stores all axes negated, slice axis first; the spacing must come from the zooms in array order.
    affine = np.diag([-spacing[0], -spacing[1], -spacing[2], 1.0])
    nib.save(nib.Nifti1Image(np.asarray(array).astype(dtype), affine), str(path))
    return path


@pytest.fixture
def kits_folders(tmp_path):
    """Reference in KiTS layout (one case with both files, MAJ must win) and predictions."""
    ref_dir, pred_dir = tmp_path / "raw", tmp_path / "pred"
    cases = {}
    for index, case_id in enumerate(["case_00002", "case_00000", "case_00001"]):
        ref = _labels(index, with_cyst=index == 1)
        pred = np.roll(ref, 1, axis=1 + index % 2)
        name = "aggregated_MAJ_seg.nii.gz" if index == 1 else "segmentation.nii.gz"
        _save(ref, ref_dir / case_id / name)
        _save(np.zeros(SHAPE), ref_dir / case_id / "imaging.nii.gz", dtype=np.int16)
        _save(pred, pred_dir / f"{case_id}.nii.gz")
        cases[case_id] = (pred, ref)
    # A stale plain segmentation next to the majority vote must be ignored.
    _save(np.zeros(SHAPE), ref_dir / "case_00000" / "segmentation.nii.gz")
    return pred_dir, ref_dir, cases


def test_score_folders_kits_layout(kits_folders):
    pred_dir, ref_dir, cases = kits_folders
    rows = score_folders(pred_dir, ref_dir, "kits21", workers=1)
    assert [row["caseID"] for row in rows] == ["case_00000", "case_00001", "case_00002"]
    for row in rows:
        pred, ref = cases[row["caseID"]]
        assert row == pytest.approx({"caseID": row["caseID"], **case_scores(pred, ref, SPACING)})
    assert rows[0]["Dice_masses"] != rows[0]["Dice_tumor"]  # the cyst came from the MAJ file


def test_score_folders_in_worker_processes_matches_serial(kits_folders):
    pred_dir, ref_dir, _ = kits_folders
    assert score_folders(pred_dir, ref_dir, "kits21", workers=2) == \
        score_folders(pred_dir, ref_dir, "kits21", workers=1)


def test_score_folders_flat_layout_uses_header_spacing_in_array_order(tmp_path):
    ref = _labels(5)
    pred = np.roll(ref, 1, axis=0)
    _save(ref, tmp_path / "ref" / "a.nii.gz")
    _save(pred, tmp_path / "pred" / "a.nii.gz")
    _save(pred, tmp_path / "pred" / "unrelated_extra.nii.gz")
    rows = score_folders(tmp_path / "pred", tmp_path / "ref", "kits19", workers=2)
    assert [row["caseID"] for row in rows] == ["a"]
    assert rows[0] == pytest.approx({"caseID": "a", **case_scores(pred, ref, SPACING)})
    assert rows[0]["SD_kidney"] != pytest.approx(case_scores(pred, ref, SPACING[::-1])["SD_kidney"])


def test_find_references_prefers_majority_vote(kits_folders):
    _, ref_dir, _ = kits_folders
    references = find_references(ref_dir)
    assert references["case_00000"].name == "aggregated_MAJ_seg.nii.gz"
    assert references["case_00001"].name == "segmentation.nii.gz"


def test_find_references_in_a_kits_repository_clone(tmp_path):
    _save(_labels(0), tmp_path / "kits21" / "data" / "case_00007" / "aggregated_MAJ_seg.nii.gz")
    references = find_references(tmp_path / "kits21")
    assert list(references) == ["case_00007"]


def test_missing_prediction_names_the_case(kits_folders):
    pred_dir, ref_dir, _ = kits_folders
    (pred_dir / "case_00001.nii.gz").unlink()
    with pytest.raises(UserError, match="case_00001"):
        score_folders(pred_dir, ref_dir, "kits21", workers=1)


def test_shape_mismatch_names_the_case(kits_folders):
    pred_dir, ref_dir, _ = kits_folders
    _save(np.zeros((6, 16, 15)), pred_dir / "case_00002.nii.gz")
    with pytest.raises(UserError, match=r"case_00002.*shape"):
        score_folders(pred_dir, ref_dir, "kits21", workers=1)


def test_corrupt_prediction_names_the_case(kits_folders):
    pred_dir, ref_dir, _ = kits_folders
    (pred_dir / "case_00000.nii.gz").write_bytes(b"\x1f\x8b\x08\x00 definitely not a volume")
    with pytest.raises(UserError, match="case_00000"):
        score_folders(pred_dir, ref_dir, "kits21", workers=2)


def test_truncated_reference_names_the_case(kits_folders):
    pred_dir, ref_dir, _ = kits_folders
    path = ref_dir / "case_00002" / "segmentation.nii.gz"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="case_00002"):
        score_folders(pred_dir, ref_dir, "kits21", workers=1)


def test_spacing_mismatch_names_the_case(kits_folders):
    pred_dir, ref_dir, cases = kits_folders
    _save(cases["case_00001"][0], pred_dir / "case_00001.nii.gz", spacing=SPACING[::-1])
    with pytest.raises(UserError, match=r"case_00001.*spacing"):
        score_folders(pred_dir, ref_dir, "kits21", workers=1)


def test_labels_outside_the_metric_are_rejected(kits_folders):
    pred_dir, ref_dir, _ = kits_folders
    with pytest.raises(UserError, match=r"case_00000.*\[3\]"):
        score_folders(pred_dir, ref_dir, "kits19", workers=1)
    _save(np.full(SHAPE, 7), pred_dir / "case_00001.nii.gz")
    with pytest.raises(UserError, match=r"case_00001.*\[7\]"):
        score_folders(pred_dir, ref_dir, "kits21", workers=1)


def test_bad_folders_and_metric(tmp_path, kits_folders):
    pred_dir, ref_dir, _ = kits_folders
    with pytest.raises(UserError, match="unknown metric"):
        score_folders(pred_dir, ref_dir, "brats", workers=1)
    with pytest.raises(UserError, match="prediction folder"):
        score_folders(tmp_path / "nope", ref_dir, "kits21")
    with pytest.raises(UserError, match="reference folder"):
        score_folders(pred_dir, tmp_path / "nope", "kits21")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no references"):
        score_folders(pred_dir, tmp_path / "empty", "kits21")


# ---------------------------------------------------------------- geometry of the pair

REF_AFFINE = np.diag([-SPACING[0], -SPACING[1], -SPACING[2], 1.0])  # what _save writes (sform only)


def _flipped_prediction(pred_dir, ref_dir, pred):
    """The same world labels stored with the last array axis reversed, its affine saying so."""
    write_header_variant(pred_dir / "case_00001.nii.gz", pred[:, :, ::-1].copy(),
                         sform=flipped(REF_AFFINE, 2, SHAPE[2]))
    return pred_dir / "case_00001.nii.gz"


def _moved_prediction(pred_dir, ref_dir, pred):
    return write_header_variant(pred_dir / "case_00001.nii.gz", pred, sform=shifted(REF_AFFINE, 40))


def _prediction_pixdim_zero(pred_dir, ref_dir, pred):
    return write_header_variant(pred_dir / "case_00001.nii.gz", pred, sform=REF_AFFINE, pixdim=(0, 0.8, 0.7))


def _reference_qform_disagrees(pred_dir, ref_dir, pred):
    ref = np.asanyarray(nib.load(ref_dir / "case_00001" / "segmentation.nii.gz").dataobj)
    return write_header_variant(ref_dir / "case_00001" / "segmentation.nii.gz", ref, sform=REF_AFFINE,
                                qform=shifted(REF_AFFINE, [0, 0, 25]))


def _reference_singular(pred_dir, ref_dir, pred):
    ref = np.asanyarray(nib.load(ref_dir / "case_00001" / "segmentation.nii.gz").dataobj)
    singular = REF_AFFINE.copy()
    singular[:3, 0] = 0
    return write_header_variant(ref_dir / "case_00001" / "segmentation.nii.gz", ref, sform=singular,
                                pixdim=SPACING)


GEOMETRY_DAMAGE = [  # (name, damage(pred_dir, ref_dir, prediction) -> damaged file, what the error must say)
    ("flipped prediction with a matching flipped affine", _flipped_prediction,
     r"case_00001: prediction .*case_00001\.nii\.gz does not lie on the voxel grid of the reference "
     r".*segmentation\.nii\.gz: prediction axis directions LPS vs reference LPI"),
    ("prediction 40 mm from the reference", _moved_prediction,
     r"case_00001: prediction .* does not lie on the voxel grid .*: prediction origin \(40, 40, 40\) mm "
     r"vs reference \(0, 0, 0\) mm"),
    ("prediction pixdim 0 under its sform", _prediction_pixdim_zero,
     r"case_00001: prediction .*case_00001\.nii\.gz has an invalid voxel spacing: pixdim \(0, 0\.8, 0\.7\) "
     r"vs sform \(3, 0\.8, 0\.7\)"),
    ("reference qform and sform disagree", _reference_qform_disagrees,
     r"case_00001: reference .*segmentation\.nii\.gz: its sform and qform describe different geometries"),
    ("reference affine singular", _reference_singular,
     r"case_00001: reference .*segmentation\.nii\.gz has a singular"),
]


@pytest.mark.parametrize("name, damage, message", GEOMETRY_DAMAGE, ids=[row[0] for row in GEOMETRY_DAMAGE])
def test_geometry_problems_are_refused_naming_case_and_files(kits_folders, name, damage, message):
    pred_dir, ref_dir, cases = kits_folders
    damaged = damage(pred_dir, ref_dir, cases["case_00001"][0])
    with pytest.raises(UserError, match=message) as info:
        score_folders(pred_dir, ref_dir, "kits21", workers=1)
    assert str(damaged) in str(info.value)


@pytest.mark.parametrize("name, header", [
    ("qform only", dict(qform=REF_AFFINE)),
    ("qform and sform", dict(qform=REF_AFFINE, sform=REF_AFFINE)),
    ("origin rounded by 1e-4 mm", dict(sform=shifted(REF_AFFINE, 1e-4))),
])
def test_same_grid_written_differently_is_scored(kits_folders, name, header):
    pred_dir, ref_dir, cases = kits_folders
    pred, ref = cases["case_00001"]
    write_header_variant(pred_dir / "case_00001.nii.gz", pred, **header)
    rows = {row["caseID"]: row for row in score_folders(pred_dir, ref_dir, "kits21", workers=1)}
    assert rows["case_00001"] == pytest.approx({"caseID": "case_00001", **case_scores(pred, ref, SPACING)})


def _rows():
    rows = []
    for index in range(3):
        row = {"caseID": f"case_{index:05d}", "kits19_kidney_dice": 0.9 + 0.01 * index,
               "kits19_tumor_dice": 0.5 + 0.1 * index}
        row["kits19_composite"] = (row["kits19_kidney_dice"] + row["kits19_tumor_dice"]) / 2
        for offset, column in enumerate(KITS21_COLUMNS):
            row[column] = 0.3 + 0.1 * offset + 0.05 * index
        rows.append(row)
    return rows


def test_summarize_means_and_keys():
    summary = summarize(_rows())
    assert tuple(summary) == SUMMARY_KEYS
    assert summary["cases"] == 3
    assert summary["kits19_tumor_dice"] == pytest.approx(0.6)
    assert summary["kits21_dice_kidney"] == pytest.approx(0.35)
    assert summary["kits21_sd_tumor"] == pytest.approx(0.85)
    assert summary["kits21_mean_dice"] == pytest.approx((0.35 + 0.45 + 0.55) / 3)
    assert summary["kits21_mean_sd"] == pytest.approx((0.65 + 0.75 + 0.85) / 3)
    with pytest.raises(ValueError):
        summarize([])


def test_metrics_csv_format(tmp_path):
    path = tmp_path / "new" / "metrics.csv"
    write_metrics_csv(_rows(), path)
    lines = path.read_text().splitlines()
    assert lines[0] == "caseID,Dice_kidney,Dice_masses,Dice_tumor,SD_kidney,SD_masses,SD_tumor"
    assert lines[1] == "case_00000,0.30000000,0.40000000,0.50000000,0.60000000,0.70000000,0.80000000"
    assert lines[-1] == "average,0.35000000,0.45000000,0.55000000,0.65000000,0.75000000,0.85000000"
    assert len(lines) == 5
    assert [p.name for p in path.parent.iterdir()] == ["metrics.csv"]
    with open(path, newline="") as handle:
        assert [row["caseID"] for row in csv.DictReader(handle)][-1] == "average"


def test_summary_json_with_extra(tmp_path):
    path = tmp_path / "summary.json"
    returned = write_summary_json(_rows(), path, extra={"fold": 0})
    on_disk = json.loads(path.read_text())
    assert on_disk == returned
    assert list(on_disk) == list(SUMMARY_KEYS) + ["fold"]
    with pytest.raises(ValueError):
        write_summary_json(_rows(), path, extra={"cases": 99})


def test_failed_write_leaves_previous_file_and_no_temporaries(tmp_path):
    path = tmp_path / "metrics.csv"
    write_metrics_csv(_rows(), path)
    before = path.read_text()
    broken = _rows()
    del broken[1]["SD_tumor"]
    with pytest.raises(ValueError):
        write_metrics_csv(broken, path)
    with pytest.raises(ValueError):
        write_summary_json(broken, tmp_path / "summary.json")
    assert path.read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.csv"]


def test_interrupted_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "summary.json"
    write_summary_json(_rows(), path)
    before = path.read_text()

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr("src.files.commit", failing_replace)
    with pytest.raises(OSError):
        write_summary_json(_rows()[:1], path)
    assert path.read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]

import csv
import io
import json
import shutil

import numpy as np
import pytest
from matplotlib import image as mpimg

from scripts.make_report import build_report, main, shown_path, side_by_side
from src.data.preprocess import preprocess_dataset
from tests.data.test_io import write_kits_case

COLUMNS = ["caseID", "Dice_kidney", "Dice_masses", "Dice_tumor", "SD_kidney", "SD_masses", "SD_tumor"]


def _png(height, width, value):
    buffer = io.BytesIO()
    mpimg.imsave(buffer, np.full((height, width, 3), value, np.float32), format="png")
    return buffer.getvalue()


@pytest.fixture
def work(tmp_path):
    """A demo folder as run_demo.sh leaves it before the report: two held-out cases scored."""
    work = tmp_path / "demo.partial"
    for i in range(2):
        write_kits_case(work / "raw", f"case_{i:05d}", seed=i)
    preprocess_dataset(work / "raw", work / "preprocessed", patch_budget_voxels=8 * 16 * 16, num_folds=2, workers=1,
                       progress=False)
    (work / "eval" / "predictions").mkdir(parents=True)
    rows = [["case_00000", 0.91, 0.5, 0.5, 0.8, 0.4, 0.4], ["case_00001", 0.97, 0.9, 0.9, 0.95, 0.85, 0.85]]
    with (work / "eval" / "metrics.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        writer.writerows(rows + [["average", 0.94, 0.7, 0.7, 0.875, 0.625, 0.625]])
    for case_id, *_ in rows:  # the reference itself stands in for a prediction
        shutil.copy(work / "raw" / case_id / "segmentation.nii.gz", work / "eval" / "predictions" / f"{case_id}.nii.gz")
    summary = {"cases": 2, "kits19_kidney_dice": 0.94, "kits19_tumor_dice": 0.7, "kits19_composite": 0.82,
               "kits21_mean_dice": 0.8, "kits21_mean_sd": 0.7}
    (work / "eval" / "summary.json").write_text(json.dumps(summary))
    (work / "train" / "fold_0").mkdir(parents=True)
    (work / "train" / "fold_0" / "progress.png").write_bytes(_png(4, 4, 0.5))
    (work / "train" / "fold_0" / "training_log.txt").write_text("epoch 1/1\n")
    (work / "test").mkdir()
    with (work / "test" / "metrics.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows([COLUMNS, ["case_00000", 0.8, 0.6, 0.6, 0.7, 0.5, 0.5],
                                      ["case_00001", 0.9, 1.0, 1.0, 0.9, 1.0, 1.0],
                                      ["average", 0.85, 0.8, 0.8, 0.8, 0.75, 0.75]])
    (work / "predict").mkdir()
    report = {"image": str(work / "raw" / "case_00001" / "imaging.nii.gz"), "largest_tumor_diameter_mm": 12.5,
              "volumes_ml": {"kidney": {"total": 3.0, "left": 1.0, "right": 2.0}}}
    (work / "predict" / "case_00001_report.json").write_text(json.dumps(report))
    (work / "predict" / "case_00001_report.html").write_text("<html>the case page</html>")
    return work


def test_report_gathers_scores_overlays_and_paths_relative_to_the_demo_folder(work, tmp_path):
    target = build_report(work, tmp_path / "report", seconds=12.7)
    text = target.read_text()
    assert "KiTS19 kidney Dice 0.9400, tumour Dice 0.7000" in text and "12 s" in text
    assert "| case_00000 | 0.9100 | 0.5000 | 0.8000 |" in text
    assert "worst held-out case, case_00000" in text and "best held-out case, case_00001" in text
    assert "Prediction of `raw/case_00001/imaging.nii.gz`" in text and "12.5 mm" in text
    assert "test set (2 cases of another seed, the MindIR): KiTS19 kidney Dice 0.8500, tumour Dice 0.8000" in text
    for name in ("summary.json", "metrics.csv", "test_metrics.csv", "training_curve.png", "training_log.txt",
                 "predicted_case_00001_report.json", "predicted_case_00001_report.html"):
        assert (tmp_path / "report" / name).is_file(), name
    overlay = mpimg.imread(tmp_path / "report" / "overlay_worst.png")
    assert overlay.shape[1] > 1.5 * overlay.shape[0]  # reference and prediction side by side


def test_side_by_side_pads_the_shorter_image():
    combined = mpimg.imread(io.BytesIO(side_by_side(_png(6, 5, 0.0), _png(3, 4, 0.0))), format="png")
    assert combined.shape[:2] == (6, 9)
    assert np.allclose(combined[3:, 5:, :3], 1.0) and np.allclose(combined[:3, 5:, :3], 0.0)


def test_paths_outside_the_demo_folder_stay_as_given(tmp_path):
    assert shown_path("/data/ct.nii.gz", tmp_path) == "/data/ct.nii.gz"


def test_missing_demo_outputs_are_one_user_error(tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["--work", str(tmp_path), "--report", str(tmp_path / "r")])
    assert exit_info.value.code == 2


def test_a_report_left_incomplete_by_a_killed_prediction_is_not_reported(work, tmp_path):
    (work / "predict" / "case_00000_report.json").write_text(json.dumps(
        {"producer": "predict.py", "status": "incomplete", "case_id": "case_00000"}))
    text = build_report(work, tmp_path / "report").read_text()
    assert "Prediction of `raw/case_00001/imaging.nii.gz`" in text and "case_00000/imaging" not in text

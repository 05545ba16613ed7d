import csv
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from src.errors import UserError
from src.infer.evaluate import evaluate_cases, reference_label_paths
from src.infer.postprocess import largest_component
from tests.infer.tiny_model import make_tiny_dataset, tiny_config, write_tiny_checkpoint
from tests.helpers import load_script

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_tiny_dataset(tmp_path_factory.mktemp("tiny"))


def oracle(pre_dir, speck=False):
    """Probabilities = one-hot of the preprocessed segmentation (optionally with a far tumour speck)."""
    def probabilities(case_id, data, props):
        with np.load(Path(pre_dir) / f"{case_id}.npz") as arrays:
            seg = np.maximum(arrays["seg"], 0)
        if speck:
            seg = seg.copy()
            seg[0, 0, 0] = 2
        return np.stack([(seg == k).astype(np.float32) for k in range(3)])
    return probabilities


def test_references_found_through_the_raw_image_path(dataset, tmp_path):
    raw, pre, _ = dataset
    props = {"case_00001": json.loads((pre / "case_00001.json").read_text())}
    assert reference_label_paths(props) == {"case_00001": raw / "case_00001" / "segmentation.nii.gz"}
    flat = tmp_path / "refs"
    flat.mkdir()
    shutil.copy(raw / "case_00001" / "segmentation.nii.gz", flat / "case_00001.nii.gz")
    assert reference_label_paths(props, flat) == {"case_00001": flat / "case_00001.nii.gz"}
    with pytest.raises(UserError, match="case_00001"):
        reference_label_paths({"case_00001": {"image_meta": {"source": str(tmp_path / "x" / "y" / "z.nii.gz")}}})


def test_oracle_probabilities_score_near_perfect(dataset, tmp_path):
    raw, pre, plan = dataset
    summary = evaluate_cases(["case_00000", "case_00003"], pre, oracle(pre), tmp_path / "ev", "none", [],
                             plan.labels, progress=False)
    assert summary["cases"] == 2
    assert summary["kits19_kidney_dice"] > 0.9 and summary["kits19_tumor_dice"] > 0.8
    rows = list(csv.reader((tmp_path / "ev" / "metrics.csv").open()))
    assert rows[0][0] == "caseID" and [r[0] for r in rows[1:]] == ["case_00000", "case_00003", "average"]
    written = nib.load(tmp_path / "ev" / "predictions" / "case_00003.nii.gz")
    source = nib.load(raw / "case_00003" / "imaging.nii.gz")
    assert written.shape == source.shape
    np.testing.assert_array_equal(written.affine, source.affine)
    assert json.loads((tmp_path / "ev" / "eval_info.json").read_text())["postprocessing"] == "no postprocessing"


def test_auto_postprocessing_is_decided_stored_and_applied(dataset, tmp_path):
    _, pre, plan = dataset
    model = tmp_path / "fold_0" / "checkpoint_best.ckpt"
    model.parent.mkdir()
    model.write_bytes(b"stands for a checkpoint: the decision is bound to its sha256")
    cases = ["case_00000", "case_00003"]
    summary = evaluate_cases(cases, pre, oracle(pre, speck=True), tmp_path / "ev", "auto", [model],
                             plan.labels, progress=False)
    spec = json.loads((tmp_path / "ev" / "postprocessing.json").read_text())
    assert 2 in spec["per_class"]
    assert json.loads((model.parent / "postprocessing.json").read_text()) == spec
    for case_id in cases:
        label = np.asanyarray(nib.load(tmp_path / "ev" / "predictions" / f"{case_id}.nii.gz").dataobj)
        assert label[0, 0, 0] == 0
    clean = evaluate_cases(cases, pre, oracle(pre), tmp_path / "ev_clean", "none", [], plan.labels,
                           progress=False)
    assert summary["kits19_tumor_dice"] == pytest.approx(clean["kits19_tumor_dice"])
    # a second run finds the stored decision next to the model instead of deciding again
    evaluate_cases(cases, pre, oracle(pre, speck=True), tmp_path / "ev2", "auto", [model], plan.labels,
                   progress=False)
    info = json.loads((tmp_path / "ev2" / "eval_info.json").read_text())
    assert info["postprocessing_source"].endswith("postprocessing.json")
    assert not (tmp_path / "ev2" / "postprocessing.json").exists()


def test_training_references_give_the_volume_floor_candidates(dataset, tmp_path):
    _, pre, plan = dataset
    model = tmp_path / "fold_0" / "checkpoint_best.ckpt"
    model.parent.mkdir()
    model.write_bytes(b"stands for a checkpoint: the decision is bound to its sha256")
    evaluate_cases(["case_00000"], pre, oracle(pre, speck=True), tmp_path / "ev", "auto", [model], plan.labels,
                   progress=False, training_case_ids=["case_00001", "case_00002"])
    spec = json.loads((tmp_path / "ev" / "postprocessing.json").read_text())
    voxel_ml = float(np.prod(plan.target_spacing)) / 1000
    for value in ("1", "2"):
        smallest = min(np.sum(largest_component(np.load(pre / f"{c}.npz")["seg"] == int(value)))
                       for c in ("case_00001", "case_00002"))
        assert spec["candidate_min_component_ml"][value] == pytest.approx(0.5 * smallest * voxel_ml)


def test_eval_command_with_checkpoint_mindir_and_scoring(dataset, tmp_path, capsys, restore_mode):
    raw, pre, plan = dataset
    config = tmp_path / "cfg.yaml"
    config.write_text("device_target: CPU\namp_level: O0\ntta_mirror: false\npostprocess: none\n")
    ckpt = write_tiny_checkpoint(tmp_path / "fold_0" / "checkpoint_best.ckpt", plan=plan,
                                 cfg=tiny_config(base_features=4, max_features=8))
    eval_script = load_script("eval")
    eval_script.main(["--config", str(config), "--ckpt", str(ckpt), "--data", str(pre), "--fold", "0",
                      "--output", str(tmp_path / "ev")])
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert summary["cases"] == 2 and "kits21_mean_sd" in summary
    assert "fold 0: 2 cases" in capsys.readouterr().out

    from src.infer.export import export_network
    model, _ = export_network(tiny_config(), ckpt, tmp_path / "tiny", "MINDIR")
    # the explicit subcommand is the same command as the form without one
    eval_script.main(["model", "--config", str(config), "--mindir", str(model), "--data", str(pre), "--fold", "0",
                      "--output", str(tmp_path / "ev_mindir")])
    assert json.loads((tmp_path / "ev_mindir" / "summary.json").read_text()) == pytest.approx(summary)

    refs = tmp_path / "refs"
    refs.mkdir()
    for case_id in ("case_00000", "case_00003"):
        shutil.copy(raw / case_id / "segmentation.nii.gz", refs / f"{case_id}.nii.gz")
    eval_script.main(["--pred", str(tmp_path / "ev" / "predictions"), "--ref", str(refs), "--metric", "kits19",
                      "--out", str(tmp_path / "scores.csv")])
    assert (tmp_path / "scores.csv").read_text() == (tmp_path / "ev" / "metrics.csv").read_text()
    # --output is the canonical spelling, --out its older alias; with or without the subcommand
    eval_script.main(["score", "--pred", str(tmp_path / "ev" / "predictions"), "--ref", str(refs), "--metric",
                      "kits19", "--output", str(tmp_path / "scores_output.csv")])
    assert (tmp_path / "scores_output.csv").read_text() == (tmp_path / "scores.csv").read_text()
    assert (tmp_path / "scores_output_summary.json").read_text() == (tmp_path / "scores_summary.json").read_text()

    with pytest.raises(SystemExit) as exit_info:
        eval_script.main(["--pred", str(tmp_path / "ev" / "predictions"), "--ref", str(refs)])
    assert exit_info.value.code == 2 and "--metric" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        eval_script.main(["--config", str(config), "--data", str(pre), "--fold", "0", "--output", "x"])
    assert "--ckpt --mindir" in capsys.readouterr().err  # argparse: one of the two is required

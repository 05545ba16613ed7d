"""Output problems of predict.py and eval.py are refused before any model loads (or any case is scored),
with one error line, and nothing that existed before is changed."""
import csv
import json
import os
import shutil
from pathlib import Path

import pytest

import src.infer.predictor as predictor_module
import src.metrics.report as report_module
from src.infer import predict_cases
from src.infer.evaluate import evaluate_cases
from tests.infer.test_evaluate import oracle
from tests.infer.tiny_model import make_tiny_dataset, write_tiny_checkpoint
from tests.helpers import Killed, killed_at_commit, load_script, snapshot

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("checks")
    raw, pre, plan = make_tiny_dataset(root)
    write_tiny_checkpoint(root / "model" / "checkpoint_best.ckpt", plan=plan)
    (root / "cfg.yaml").write_text("device_target: CPU\namp_level: O0\ntta_mirror: false\npostprocess: none\n")
    return root


def _predict(ws, input_path, output):
    return "predict", ["--config", str(ws / "cfg.yaml"), "--ckpt", str(ws / "model" / "checkpoint_best.ckpt"),
                       "--input", str(input_path), "--output", str(output)]


def _flat_folder(ws, tmp):
    flat = tmp / "cts"
    flat.mkdir()
    shutil.copy(ws / "raw" / "case_00000" / "imaging.nii.gz", flat / "patient.nii.gz")
    return flat


# ---------------------------------------------------------------- rows: damage -> (script, argv, named)

def predict_into_the_input_folder(ws, tmp, monkeypatch):
    flat = _flat_folder(ws, tmp)
    return (*_predict(ws, flat, flat), "patient.nii.gz")


def predict_single_file_into_its_folder(ws, tmp, monkeypatch):
    flat = _flat_folder(ws, tmp)
    return (*_predict(ws, flat / "patient.nii.gz", flat), "patient.nii.gz")


def predict_into_the_input_file_itself(ws, tmp, monkeypatch):
    flat = _flat_folder(ws, tmp)
    return (*_predict(ws, flat / "patient.nii.gz", flat / "patient.nii.gz"), "patient.nii.gz")


def predict_nnunet_names_into_their_folder(ws, tmp, monkeypatch):
    """<id>_0000.nii.gz inputs keep the id without the channel: outputs would not clash by name, but a
    hard link to the input where an output goes would still replace it."""
    flat = tmp / "cts"
    flat.mkdir()
    shutil.copy(ws / "raw" / "case_00000" / "imaging.nii.gz", flat / "p1_0000.nii.gz")
    out = tmp / "out"
    out.mkdir()
    os.link(flat / "p1_0000.nii.gz", out / "p1.nii.gz")
    script, argv = _predict(ws, flat, out)
    return script, argv + ["--overwrite"], "p1.nii.gz"


def predict_into_a_case_folder_of_the_input(ws, tmp, monkeypatch):
    raw = shutil.copytree(ws / "raw", tmp / "raw")
    return (*_predict(ws, raw, raw / "case_00001"), "case_00001/imaging.nii.gz")


def predict_into_a_read_only_folder(ws, tmp, monkeypatch):
    out = tmp / "ro"
    out.mkdir()
    real_access = os.access
    # tests may run as root, who writes anywhere: make the folder read-only as far as the check can tell
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: False if Path(path) == out else
                        real_access(path, mode, **kw))
    return (*_predict(ws, ws / "raw", out), "not writable")


def predict_folder_where_a_label_goes(ws, tmp, monkeypatch):
    (tmp / "out" / "case_00002.nii.gz").mkdir(parents=True)
    return (*_predict(ws, ws / "raw", tmp / "out"), "case_00002.nii.gz")


def predict_folder_where_a_report_goes(ws, tmp, monkeypatch):
    (tmp / "out" / "case_00003_report.json").mkdir(parents=True)
    return (*_predict(ws, ws / "raw", tmp / "out"), "case_00003_report.json")


def predict_over_a_foreign_failures_log(ws, tmp, monkeypatch):
    (tmp / "out").mkdir()
    (tmp / "out" / "failures.log").write_text("a user's notes")
    return (*_predict(ws, ws / "raw", tmp / "out"), "failures.log")


def predict_output_is_a_file(ws, tmp, monkeypatch):
    (tmp / "taken").write_text("a user's file")
    return (*_predict(ws, ws / "raw", tmp / "taken"), "taken")


def predict_output_under_a_file(ws, tmp, monkeypatch):
    (tmp / "taken").write_text("a user's file")
    return (*_predict(ws, ws / "raw", tmp / "taken" / "below"), "taken")


def _eval(ws, output, *extra):
    return "eval", ["--config", str(ws / "cfg.yaml"), "--ckpt", str(ws / "model" / "checkpoint_best.ckpt"),
                    "--data", str(ws / "pre"), "--fold", "0", "--output", str(output), *extra]


def eval_into_the_data_folder(ws, tmp, monkeypatch):
    pre = shutil.copytree(ws / "pre", tmp / "pre")
    name, argv = _eval(ws, pre)
    argv[argv.index(str(ws / "pre"))] = str(pre)
    return name, argv, "--data folder"


def eval_predictions_into_the_reference_folder(ws, tmp, monkeypatch):
    refs = tmp / "ev" / "predictions"
    refs.mkdir(parents=True)
    for case in (ws / "raw").iterdir():
        shutil.copy(case / "segmentation.nii.gz", refs / f"{case.name}.nii.gz")
    return (*_eval(ws, tmp / "ev", "--ref", str(refs)), "predictions")


def eval_into_the_reference_folder(ws, tmp, monkeypatch):
    refs = tmp / "refs"
    refs.mkdir()
    for case in (ws / "raw").iterdir():
        shutil.copy(case / "segmentation.nii.gz", refs / f"{case.name}.nii.gz")
    return (*_eval(ws, refs, "--ref", str(refs)), "--ref folder")


def eval_output_is_a_file(ws, tmp, monkeypatch):
    (tmp / "taken").write_text("a user's file")
    return (*_eval(ws, tmp / "taken"), "taken")


def eval_folder_where_the_summary_goes(ws, tmp, monkeypatch):
    (tmp / "ev" / "summary.json").mkdir(parents=True)
    return (*_eval(ws, tmp / "ev"), "summary.json")


def _score(ws, tmp, out):
    pred = tmp / "pred"
    pred.mkdir()
    for case in (ws / "raw").iterdir():
        shutil.copy(case / "segmentation.nii.gz", pred / f"{case.name}.nii.gz")
    return "eval", ["--pred", str(pred), "--ref", str(ws / "raw"), "--metric", "kits19", "--out", str(out)]


def score_out_under_a_file(ws, tmp, monkeypatch):
    (tmp / "file").write_text("a user's file")
    return (*_score(ws, tmp, tmp / "file" / "m.csv"), "file")


def score_out_is_a_folder(ws, tmp, monkeypatch):
    (tmp / "m.csv").mkdir()
    return (*_score(ws, tmp, tmp / "m.csv"), "m.csv")


def score_out_is_a_prediction(ws, tmp, monkeypatch):
    script, argv = _score(ws, tmp, tmp / "pred" / "case_00001.nii.gz")
    return script, argv, "case_00001.nii.gz"


ROWS = [
    predict_into_the_input_folder, predict_single_file_into_its_folder, predict_into_the_input_file_itself,
    predict_nnunet_names_into_their_folder, predict_into_a_case_folder_of_the_input, predict_into_a_read_only_folder,
    predict_folder_where_a_label_goes,
    predict_folder_where_a_report_goes, predict_over_a_foreign_failures_log, predict_output_is_a_file,
    predict_output_under_a_file,
    eval_into_the_data_folder, eval_predictions_into_the_reference_folder, eval_into_the_reference_folder,
    eval_output_is_a_file, eval_folder_where_the_summary_goes,
    score_out_under_a_file, score_out_is_a_folder, score_out_is_a_prediction,
]


@pytest.mark.parametrize("row", ROWS, ids=[row.__name__ for row in ROWS])
def test_output_problems_are_refused_before_any_work(row, workspace, tmp_path, monkeypatch, capsys):
    calls = []

    def never(*args, **kwargs):
        calls.append(args)
        raise AssertionError("the model was loaded (or scoring started) despite an output problem")

    monkeypatch.setattr(predict_cases, "load_model", never)
    monkeypatch.setattr(predictor_module, "load_predictor", never)
    monkeypatch.setattr(report_module, "score_folders", never)
    script, argv, named = row(workspace, tmp_path, monkeypatch)
    before_ws, before_tmp = snapshot(workspace), snapshot(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        load_script(script).main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and named in errors[0], err
    assert "Traceback" not in err
    assert not calls
    assert snapshot(workspace) == before_ws and snapshot(tmp_path) == before_tmp


# ---------------------------------------------------------------- eval.py reruns into an existing folder

def test_eval_rerun_drops_stale_predictions_and_writes_the_summary_last(workspace, tmp_path):
    pre = workspace / "pre"
    plan = json.loads((pre / "plans.json").read_text())
    ev = tmp_path / "ev"
    evaluate_cases(["case_00000", "case_00001", "case_00003"], pre, oracle(pre), ev, "none", [], plan["labels"],
                   progress=False)
    assert (ev / "predictions" / "case_00001.nii.gz").is_file()

    with killed_at_commit(0) as attempted:
        evaluate_cases(["case_00000", "case_00003"], pre, oracle(pre), ev, "none", [], plan["labels"], progress=False)
    written = [path.name for path in attempted]
    assert written[-1] == "summary.json" and written.count("summary.json") == 1
    assert not (ev / "predictions" / "case_00001.nii.gz").exists()
    rows = list(csv.reader((ev / "metrics.csv").open()))
    assert [r[0] for r in rows[1:]] == ["case_00000", "case_00003", "average"]
    assert json.loads((ev / "summary.json").read_text())["cases"] == 2

    total = len(written)
    for kill_at in range(1, total + 1):
        with pytest.raises(Killed), killed_at_commit(kill_at):
            evaluate_cases(["case_00000", "case_00003"], pre, oracle(pre), ev, "none", [], plan["labels"],
                           progress=False)
        # killed anywhere: no summary beside a half-rewritten folder
        assert not (ev / "summary.json").exists()
        assert not [p for p in ev.rglob("*") if ".tmp-" in p.name]
    kill_at = 0
    summary = evaluate_cases(["case_00000", "case_00003"], pre, oracle(pre), ev, "none", [], plan["labels"],
                             progress=False)
    assert json.loads((ev / "summary.json").read_text()) == summary

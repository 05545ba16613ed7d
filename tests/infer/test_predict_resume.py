"""predict.py over an output folder that already holds work: skip what this model finished, refuse what it
must not replace, survive kills at every write and bad cases of any kind."""
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from src.data.layouts import find_cases
from src.errors import UserError
from src.infer import predict_cases
from src.infer.predict_cases import predict_files
from src.infer.prediction_outputs import (COMPLETE, FAILURE_LOG, INCOMPLETE, NEW, case_targets, classify_case,
                                          run_identity)
from tests.infer.tiny_model import tiny_config, write_tiny_checkpoint, write_tiny_kits19
from tests.helpers import Killed, killed_at_commit, load_script, snapshot

ROOT = Path(__file__).resolve().parents[2]
CFG = tiny_config(tta_mirror=False, postprocess="none")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    raw = root / "raw"
    write_tiny_kits19(raw, num_cases=2)
    return raw, write_tiny_checkpoint(root / "a.ckpt", seed=1), write_tiny_checkpoint(root / "b.ckpt", seed=2)


@pytest.fixture
def loads(monkeypatch):
    """Counts how often a run loads its model."""
    calls = []
    real = predict_cases.load_model
    monkeypatch.setattr(predict_cases, "load_model", lambda *a, **k: calls.append(a) or real(*a, **k))
    return calls


def states(raw, out, ckpt, cfg=CFG):
    identity = run_identity(cfg, [ckpt])
    return {case.case_id: classify_case(case_targets(out, case.case_id), case, identity)[0]
            for case in find_cases(raw)}


def labels_and_volumes(out: Path) -> dict:
    result = {}
    for report in sorted(out.glob("*_report.json")):
        content = json.loads(report.read_text())
        case_id = content["case_id"]
        result[case_id] = (np.asanyarray(nib.load(out / f"{case_id}.nii.gz").dataobj).tolist(), content["volumes_ml"],
                           content["status"])
    return result


def test_complete_cases_of_the_same_model_are_skipped(models, tmp_path, loads, capsys, restore_mode):
    raw, ckpt, _ = models
    out = tmp_path / "out"
    assert len(predict_files(CFG, raw, out, ckpts=[ckpt], progress=False).reports) == 2
    assert states(raw, out, ckpt) == {"case_00000": COMPLETE, "case_00001": COMPLETE}
    before = snapshot(out)
    capsys.readouterr()
    run = predict_files(CFG, raw, out, ckpts=[ckpt], progress=False)
    assert run.skipped == 2 and not run.reports and len(loads) == 1  # the second run never loaded the model
    assert "skipped 2 of 2 case(s)" in capsys.readouterr().err
    assert snapshot(out) == before
    # a case whose label is gone is predicted again, the other one is kept as it is
    (out / "case_00001.nii.gz").unlink()
    run = predict_files(CFG, raw, out, ckpts=[ckpt], progress=False)
    assert run.skipped == 1 and [r["case_id"] for r in run.reports] == ["case_00001"]
    assert snapshot(out)["case_00000.nii.gz"] == before["case_00000.nii.gz"]
    assert states(raw, out, ckpt) == {"case_00000": COMPLETE, "case_00001": COMPLETE}


def test_outputs_this_run_did_not_make_are_refused_without_overwrite(models, tmp_path, loads, capsys, restore_mode):
    raw, ckpt_a, ckpt_b = models
    out = tmp_path / "out"
    predict_files(CFG, raw, out, ckpts=[ckpt_a], progress=False)
    loads.clear()
    before = snapshot(out)
    refusals = [
        (dict(ckpts=[ckpt_b]), CFG, "case_00000: predicted by another model"),
        (dict(ckpts=[ckpt_a]), tiny_config(tta_mirror=True, postprocess="none"), "other settings (tta_mirror)"),
        (dict(ckpts=[ckpt_a, ckpt_b]), CFG, "predicted by another model"),
    ]
    for models_given, cfg, named in refusals:
        with pytest.raises(UserError, match=named.replace("(", r"\(").replace(")", r"\)")) as refused:
            predict_files(cfg, raw, out, progress=False, **models_given)
        assert "--overwrite" in str(refused.value)
    assert snapshot(out) == before and not loads

    # a label changed after predict.py wrote it (say, corrected by hand) is not silently replaced either
    edited = np.asanyarray(nib.load(out / "case_00001.nii.gz").dataobj).copy()
    edited[0, 0, 0] = 2
    image = nib.load(out / "case_00001.nii.gz")
    nib.save(nib.Nifti1Image(edited, image.affine, image.header), out / "case_00001.nii.gz")
    with pytest.raises(UserError, match="case_00001.nii.gz was changed after predict.py wrote it"):
        predict_files(CFG, raw, out, ckpts=[ckpt_a], progress=False)
    assert not loads

    # --overwrite replaces them; the reports then name model b
    run = predict_files(CFG, raw, out, ckpts=[ckpt_b], overwrite=True, progress=False)
    assert len(run.reports) == 2
    assert states(raw, out, ckpt_b) == {"case_00000": COMPLETE, "case_00001": COMPLETE}
    assert states(raw, out, ckpt_a)["case_00000"] != COMPLETE


def test_files_predict_did_not_write_are_refused_without_overwrite(models, tmp_path, loads, restore_mode):
    raw, ckpt, _ = models
    out = tmp_path / "out"
    out.mkdir()
    shutil.copy(raw / "case_00000" / "segmentation.nii.gz", out / "case_00000.nii.gz")  # someone's label
    (out / "case_00001_report.json").write_text('{"radiologist": "notes"}')
    before = snapshot(out)
    with pytest.raises(UserError, match="2 case\\(s\\).*case_00000.nii.gz was not written by predict.py.*"
                                        "case_00001_report.json was not written"):
        predict_files(CFG, raw, out, ckpts=[ckpt], progress=False)
    assert snapshot(out) == before and not loads
    predict_files(CFG, raw, out, ckpts=[ckpt], overwrite=True, progress=False)
    assert states(raw, out, ckpt) == {"case_00000": COMPLETE, "case_00001": COMPLETE}


def test_one_bad_case_of_any_kind_does_not_stop_the_others(models, tmp_path, monkeypatch, capsys, restore_mode):
    raw, ckpt, _ = models
    inputs = tmp_path / "cts"
    inputs.mkdir()
    for name in ("a_value", "b_memory", "c_good", "d_good"):
        shutil.copy(raw / "case_00000" / "imaging.nii.gz", inputs / f"{name}.nii.gz")
    (inputs / "e_truncated.nii.gz").write_bytes((inputs / "c_good.nii.gz").read_bytes()[:300])
    real = predict_cases.preprocess_image_for_inference
    faults = {"a_value": ValueError("resampled shape (0, 21, 21) has an empty axis"),
              "b_memory": MemoryError("cannot allocate 12.0 GiB")}

    def preprocess(image, meta, plan):
        for name, fault in faults.items():
            if Path(meta.source).name.startswith(name):
                raise fault
        return real(image, meta, plan)

    monkeypatch.setattr(predict_cases, "preprocess_image_for_inference", preprocess)
    config = tmp_path / "cfg.yaml"
    config.write_text("device_target: CPU\namp_level: O0\ntta_mirror: false\npostprocess: none\n")
    predict = load_script("predict")
    argv = ["--config", str(config), "--ckpt", str(ckpt), "--input", str(inputs), "--output", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as exit_info:
        predict.main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert "Traceback" not in err
    failed = sorted(line for line in err.splitlines() if line.startswith("failed: "))
    assert len(failed) == 3
    assert failed[0] == "failed: a_value: ValueError: resampled shape (0, 21, 21) has an empty axis"
    assert failed[1] == "failed: b_memory: MemoryError: cannot allocate 12.0 GiB"
    assert failed[2].startswith("failed: e_truncated: ") and "e_truncated.nii.gz" in failed[2]
    assert "error: 3 of 5 case(s) failed" in err
    out = tmp_path / "out"
    for name in ("c_good", "d_good"):
        assert json.loads((out / f"{name}_report.json").read_text())["status"] == COMPLETE
    assert not (out / "a_value.nii.gz").exists() and not (out / "e_truncated_report.json").exists()
    log = (out / FAILURE_LOG).read_text()
    assert "== a_value: ValueError" in log and "Traceback" in log and "in preprocess" in log

    # the faults gone (and the truncated file replaced), a rerun predicts only the failed cases
    faults.clear()
    shutil.copy(inputs / "c_good.nii.gz", inputs / "e_truncated.nii.gz")
    predict.main(argv)
    assert "skipped 2 of 5 case(s)" in capsys.readouterr().err
    assert not (out / FAILURE_LOG).exists()


def test_a_kill_at_every_write_leaves_each_case_old_new_or_incomplete(models, tmp_path, restore_mode):
    raw, ckpt_a, ckpt_b = models
    old = tmp_path / "old"
    predict_files(CFG, raw, old, ckpts=[ckpt_a], progress=False)
    reference = tmp_path / "reference"
    predict_files(CFG, raw, reference, ckpts=[ckpt_b], progress=False)
    expected = labels_and_volumes(reference)
    kill_at = 1
    while True:
        out = shutil.copytree(old, tmp_path / f"kill_{kill_at}")
        try:
            with killed_at_commit(kill_at):
                predict_files(CFG, raw, out, ckpts=[ckpt_b], overwrite=True, progress=False)
            finished = True
        except Killed:
            finished = False

        old_states, new_states = states(raw, out, ckpt_a), states(raw, out, ckpt_b)
        for case_id in old_states:
            assert old_states[case_id] == COMPLETE or new_states[case_id] in (COMPLETE, INCOMPLETE, NEW), \
                f"kill at write {kill_at}: {case_id} is neither old, new nor incomplete"
        assert not [p for p in out.iterdir() if ".tmp-" in p.name]
        if finished:
            break
        if COMPLETE in old_states.values():  # model a's finished work is still there: only --overwrite replaces it
            with pytest.raises(UserError, match="another model"):
                predict_files(CFG, raw, out, ckpts=[ckpt_b], progress=False)
            predict_files(CFG, raw, out, ckpts=[ckpt_b], overwrite=True, progress=False)
        else:  # only new and incomplete cases: the plain rerun finishes the run
            predict_files(CFG, raw, out, ckpts=[ckpt_b], progress=False)
        assert labels_and_volumes(out) == expected
        kill_at += 1
    assert kill_at == 11  # per case: incomplete report, label, overlay, report page, complete report


def test_leftover_temporaries_of_a_killed_run_are_removed(models, tmp_path, restore_mode):
    raw, ckpt, _ = models
    out = tmp_path / "out"
    out.mkdir()
    stale = out / "case_00000.nii.gz.tmp-999999999"  # no process has that id
    stale.write_bytes(b"half a label")
    predict_files(CFG, raw, out, ckpts=[ckpt], progress=False)
    assert not stale.exists()

"""Sharded evaluation and prediction: which cases a rank takes, the launcher's checks, and merged results that
equal a single process's (in process with hand-made ranks; under a real msrun in the slow tests)."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from src.errors import UserError
from src.infer.evaluate import evaluate_cases, merge_evaluation
from src.infer.predict_cases import merge_predictions, predict_files
from src.infer.prediction_outputs import FAILURE_LOG
from src.metrics.report import write_metrics_csv, write_summary_json
from src.msrun_env import Shard, is_extra_scheduler, is_msrun_scheduler, worker_shard
from src.sharding import (RUN_ID_VARIABLE, cases_of_rank, gather_partials, partial_path, rows_in_case_order,
                          shards_dir, write_partial)
from tests.infer.tiny_model import (make_tiny_dataset, tiny_config, write_tiny_checkpoint,
                                    write_tiny_kits19)
from tests.helpers import free_port

ROOT = Path(__file__).resolve().parents[2]
LAUNCHER = ROOT / "scripts" / "run_distribute_eval.sh"
CASES = ["case_00000", "case_00001", "case_00002", "case_00003"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_tiny_dataset(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(autouse=True)
def no_run_id(monkeypatch):
    monkeypatch.delenv(RUN_ID_VARIABLE, raising=False)


# ---------------------------------------------------------------- who takes which case

def test_case_i_of_the_sorted_ids_goes_to_rank_i_mod_world():
    ids = ["c", "a", "e", "b", "d"]
    shares = [cases_of_rank(ids, Shard(rank, 2)) for rank in range(2)]
    assert shares == [["a", "c", "e"], ["b", "d"]]
    shares = [cases_of_rank(ids, Shard(rank, 8)) for rank in range(8)]
    assert sum(shares, []) == ["a", "b", "c", "d", "e"] and shares[5:] == [[], [], []]


@pytest.mark.parametrize("env, shard", [
    ({}, None),
    ({"RANK_ID": "3", "RANK_SIZE": "8"}, None),  # a rank-table shell without msrun: one process
    ({"MS_ROLE": "MS_WORKER", "RANK_ID": "1", "MS_WORKER_NUM": "2"}, Shard(1, 2)),
    ({"MS_ROLE": "MS_WORKER", "RANK_ID": "9", "MS_WORKER_NUM": "16", "MS_NODE_ID": "9"}, Shard(9, 16)),
    ({"MS_ROLE": "MS_SCHED", "RANK_ID": "0", "MS_WORKER_NUM": "2"}, None),
])
def test_rank_and_world_come_from_msrun_worker_variables(env, shard):
    assert worker_shard(env) == shard


def test_a_worker_without_a_known_rank_is_refused():
    with pytest.raises(UserError, match="RANK_ID"):
        worker_shard({"MS_ROLE": "MS_WORKER", "MS_WORKER_NUM": "16"})
    with pytest.raises(UserError, match="outside 0..1"):
        worker_shard({"MS_ROLE": "MS_WORKER", "RANK_ID": "2", "MS_WORKER_NUM": "2"})


def test_schedulers_are_recognised():
    assert is_msrun_scheduler({"MS_ROLE": "MS_SCHED"}) and not is_msrun_scheduler({"MS_ROLE": "MS_WORKER"})
    assert is_extra_scheduler({"MS_ROLE": "MS_SCHED", "NODE_RANK": "1"})
    assert not is_extra_scheduler({"MS_ROLE": "MS_SCHED", "NODE_RANK": "0"})
    assert not is_extra_scheduler({"MS_ROLE": "MS_SCHED"})
    assert not is_extra_scheduler({"MS_ROLE": "MS_WORKER", "NODE_RANK": "1"})


# ---------------------------------------------------------------- gathering the shares

def _row(case_id, value):
    return {"caseID": case_id, "kits19_kidney_dice": value, "kits19_tumor_dice": value / 2,
            "kits19_composite": value * 0.75, "Dice_kidney": value, "Dice_masses": value / 3, "Dice_tumor": value / 2,
            "SD_kidney": value, "SD_masses": float("nan") if case_id == "b" else value, "SD_tumor": 0.1}


def _hand_partials(out, cases, world, run_id="run-1", context=None):
    values = {case_id: 0.1 * (i + 1) for i, case_id in enumerate(cases)}
    for rank in range(world):
        mine = cases_of_rank(cases, Shard(rank, world))
        write_partial(out, Shard(rank, world), cases,
                      {"rows": [_row(c, values[c]) for c in mine], "started": 100.0 + rank, "context": context},
                      environ={RUN_ID_VARIABLE: run_id})
    return [_row(c, values[c]) for c in cases]


def test_merged_rows_written_by_hand_give_the_single_process_files(tmp_path):
    cases = ["c", "a", "b", "d", "e"]  # a single process takes them in this (fold) order
    context = {"decide_here": False, "spec": None, "spec_source": "postprocess=none", "run_record": {"fold": 0}}
    rows = _hand_partials(tmp_path / "ev", cases, world=3, context=context)
    summary = merge_evaluation(tmp_path / "ev")
    write_metrics_csv(rows, tmp_path / "single.csv")
    assert json.dumps(summary) == json.dumps(write_summary_json(rows, tmp_path / "single.json"))  # NaN too
    assert (tmp_path / "ev" / "metrics.csv").read_bytes() == (tmp_path / "single.csv").read_bytes()
    assert (tmp_path / "ev" / "summary.json").read_bytes() == (tmp_path / "single.json").read_bytes()
    info = json.loads((tmp_path / "ev" / "eval_info.json").read_text())
    assert info["cases"] == cases and info["shards"] == 3 and info["fold"] == 0
    assert not shards_dir(tmp_path / "ev").exists()


def test_the_merge_refuses_missing_mixed_or_misassigned_shares(tmp_path):
    out = tmp_path / "ev"
    with pytest.raises(UserError, match="no sharded results"):
        gather_partials(out)
    cases = ["b", "a", "c"]
    _hand_partials(out, cases, world=2)
    partial_path(out, 1).unlink()
    with pytest.raises(UserError, match="rank_1.json is missing"):
        gather_partials(out)
    write_partial(out, Shard(1, 2), cases, {"rows": []}, environ={RUN_ID_VARIABLE: "run-0"})
    with pytest.raises(UserError, match="another sharded run"):
        gather_partials(out)
    _hand_partials(out, cases, world=2)
    assert [p["rank"] for p in gather_partials(out)] == [0, 1]
    with pytest.raises(UserError, match="another sharded run"):  # the launcher's own run id decides
        gather_partials(out, environ={RUN_ID_VARIABLE: "run-2"})
    moved = json.loads(partial_path(out, 1).read_text())
    moved["cases"] = ["a"]
    partial_path(out, 1).write_text(json.dumps(moved))
    with pytest.raises(UserError, match="rank 1's share"):
        gather_partials(out)
    moved.update(cases=["b"], all_cases=["a", "b"])
    partial_path(out, 1).write_text(json.dumps(moved))
    with pytest.raises(UserError, match="disagree on 'all_cases'"):
        gather_partials(out)


def test_rows_come_back_in_case_order_each_case_once():
    partials = [{"rank": 0, "rows": [{"caseID": "a"}, {"caseID": "c"}]}, {"rank": 1, "rows": [{"caseID": "b"}]}]
    assert [r["caseID"] for r in rows_in_case_order(partials, ["c", "b", "a"])] == ["c", "b", "a"]
    with pytest.raises(UserError, match="missing d"):
        rows_in_case_order(partials, ["c", "b", "a", "d"])
    partials[1]["rows"].append({"caseID": "a"})
    with pytest.raises(UserError, match="case a was scored by two ranks"):
        rows_in_case_order(partials, ["c", "b", "a"])


# ---------------------------------------------------------------- evaluation: shares merged = one process

def oracle_with_speck(pre_dir):
    """Probabilities = one-hot of the preprocessed segmentation plus a far tumour speck (auto removes it)."""
    def probabilities(case_id, data, props):
        with np.load(Path(pre_dir) / f"{case_id}.npz") as arrays:
            seg = np.maximum(arrays["seg"], 0)
        seg[0, 0, 0] = 2
        return np.stack([(seg == k).astype(np.float32) for k in range(3)])
    return probabilities


def assert_same_predictions(first: Path, second: Path, names):
    for name in names:
        a, b = nib.load(first / name), nib.load(second / name)
        np.testing.assert_array_equal(np.asanyarray(a.dataobj), np.asanyarray(b.dataobj))
        np.testing.assert_array_equal(a.affine, b.affine)


@pytest.mark.parametrize("postprocess", ["auto", "lcc"])
def test_sharded_evaluation_merges_to_the_single_process_results(dataset, tmp_path, postprocess):
    _, pre, plan = dataset
    model = tmp_path / "fold_0" / "checkpoint_best.ckpt"
    model.parent.mkdir()
    model.write_bytes(b"stands for a checkpoint: the decision is bound to its sha256")
    settings = dict(progress=False, run_record={"fold": 0}, training_case_ids=["case_00001", "case_00002"])
    single = evaluate_cases(CASES, pre, oracle_with_speck(pre), tmp_path / "single", postprocess, [model],
                            plan.labels, **settings)
    decision = model.parent / "postprocessing.json"
    if postprocess == "auto":  # the sharded run must decide again, on all the cases, not read this one
        decided_single = decision.read_bytes()
        decision.unlink()
    sharded = tmp_path / "sharded"
    for rank in (2, 0, 1):  # ranks run concurrently: any order
        partial = evaluate_cases(CASES, pre, oracle_with_speck(pre), sharded, postprocess, [model], plan.labels,
                                 shard=Shard(rank, 3), **settings)
        assert partial["cases"] == CASES[rank::3]
        assert not (sharded / "summary.json").exists()
    assert merge_evaluation(sharded) == single
    for name in ("summary.json", "metrics.csv"):
        assert (sharded / name).read_bytes() == (tmp_path / "single" / name).read_bytes()
    info = {k: v for k, v in json.loads((sharded / "eval_info.json").read_text()).items() if k != "seconds"}
    assert info.pop("shards") == 3
    assert info == {k: v for k, v in json.loads((tmp_path / "single" / "eval_info.json").read_text()).items()
                    if k != "seconds"}
    if postprocess == "auto":
        assert info["postprocessing_spec"]["per_class"] == [2]  # the speck went: predictions were rewritten
        assert (sharded / "postprocessing.json").read_bytes() == (tmp_path / "single" / "postprocessing.json").read_bytes()
        assert decision.read_bytes() == decided_single
    assert_same_predictions(sharded / "predictions", tmp_path / "single" / "predictions",
                            [f"{c}.nii.gz" for c in CASES])
    assert sorted(p.name for p in (sharded / "predictions").iterdir()) == [f"{c}.nii.gz" for c in CASES]
    assert not shards_dir(sharded).exists()


# ---------------------------------------------------------------- prediction: shares merged = one process

def comparable_report(path: Path) -> dict:
    report = json.loads(path.read_text())
    report.pop("overlay")  # the folder's name
    report.pop("label_digest")  # gzip stores the time of writing
    return report


def test_sharded_prediction_equals_one_process_and_reports_every_ranks_failures(tmp_path, capsys, restore_mode):
    raw = tmp_path / "raw"
    write_tiny_kits19(raw, num_cases=3)
    ckpt = write_tiny_checkpoint(tmp_path / "model.ckpt")
    cfg = tiny_config(postprocess="lcc")
    single = predict_files(cfg, raw, tmp_path / "single", ckpts=[ckpt], progress=False)
    assert len(single.reports) == 3
    # the sharded run also meets a broken case: rank 1 takes it (sorted ids: 0 -> r0, 1 -> r1, 2 -> r0, 3 -> r1)
    broken = raw / "case_00003"
    broken.mkdir()
    (broken / "imaging.nii.gz").write_bytes((raw / "case_00000" / "imaging.nii.gz").read_bytes()[:300])
    sharded = tmp_path / "sharded"
    runs = [predict_files(cfg, raw, sharded, ckpts=[ckpt], progress=False, shard=Shard(rank, 2)) for rank in (1, 0)]
    assert [sorted(r["case_id"] for r in run.reports) for run in runs] == [["case_00001"],
                                                                             ["case_00000", "case_00002"]]
    assert list(runs[0].failures) == ["case_00003"]  # recorded, not raised: msrun would kill the other ranks
    assert not (sharded / FAILURE_LOG).exists()
    capsys.readouterr()
    with pytest.raises(UserError, match="1 of 4 case"):
        merge_predictions(sharded)
    assert "failed: case_00003: " in capsys.readouterr().err
    assert "== case_00003: " in (sharded / FAILURE_LOG).read_text()
    assert not shards_dir(sharded).exists()
    for case_id in ("case_00000", "case_00001", "case_00002"):
        assert_same_predictions(sharded, tmp_path / "single", [f"{case_id}.nii.gz"])
        assert comparable_report(sharded / f"{case_id}_report.json") == \
            comparable_report(tmp_path / "single" / f"{case_id}_report.json")
        assert (sharded / f"{case_id}_overlay.png").read_bytes() == \
            (tmp_path / "single" / f"{case_id}_overlay.png").read_bytes()

    # the broken case repaired, a sharded rerun predicts only it and the merge clears the failure log
    shutil.copy(raw / "case_00000" / "imaging.nii.gz", broken / "imaging.nii.gz")
    runs = [predict_files(cfg, raw, sharded, ckpts=[ckpt], progress=False, shard=Shard(rank, 2)) for rank in (0, 1)]
    assert [len(run.reports) for run in runs] == [0, 1] and [run.skipped for run in runs] == [2, 1]
    assert merge_predictions(sharded) == (1, 3)
    assert not (sharded / FAILURE_LOG).exists()


# ---------------------------------------------------------------- the launcher

def _launcher(tmp_path, *args, env=None):
    """Runs a copy of the launcher with a recording msrun first on PATH (no .venv/bin beside the copy)."""
    copy = tmp_path / "repo" / "scripts" / LAUNCHER.name
    copy.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(LAUNCHER, copy)
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir(exist_ok=True)
    (fake_bin / "msrun").write_text(f"#!/bin/sh\nprintf '%s\\n' \"$@\" > {tmp_path / 'msrun_args'}\n")
    (fake_bin / "msrun").chmod(0o755)
    (fake_bin / "python").write_text(f"#!/bin/sh\nprintf '%s\\n' \"$@\" > {tmp_path / 'merge_args'}\n")
    (fake_bin / "python").chmod(0o755)
    full_env = dict(os.environ, PATH=f"{fake_bin}:{os.environ['PATH']}", **(env or {}))
    return subprocess.run(["bash", str(copy), *map(str, args)], capture_output=True, text=True, env=full_env,
                          timeout=60)


@pytest.mark.parametrize("args, message", [
    (["0", "eval.py", "--output", "ev"], "WORKERS must be a positive integer, got '0'"),
    (["x", "predict.py", "--output", "out"], "WORKERS must be a positive integer, got 'x'"),
    (["2", "train.py", "--output", "out"], "must be eval.py or predict.py, got 'train.py'"),
    (["2", "predict.py", "--input", "raw"], "predict.py needs --output"),
    (["2", "eval.py", "--pred", "p", "--ref", "r", "--metric", "kits19", "--out", "x.csv"], "runs as one process"),
    (["2", "eval.py", "--output", "ev", "--merge_shards"], "leave it out"),
    (["2", "eval.py", "score", "--pred", "p", "--ref", "r", "--metric", "kits19", "--output", "x.csv"],
     "runs as one process"),
])
def test_launcher_checks_its_arguments_before_msrun(tmp_path, args, message):
    result = _launcher(tmp_path, *args)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("error: ")
    assert message in result.stderr
    assert not (tmp_path / "msrun_args").exists()


def test_launcher_runs_the_workers_then_the_merge(tmp_path):
    out = tmp_path / "ev"
    result = _launcher(tmp_path, 4, "eval.py", "--config", "c.yaml", "--ckpt", "m.ckpt", "--data", "pre",
                       f"--output={out}", "--fold", "0", env={"DEVICE_TARGET": "CPU", "MASTER_PORT": "9300"})
    assert result.returncode == 0, result.stderr
    msrun = (tmp_path / "msrun_args").read_text().splitlines()
    assert msrun[:3] == ["--worker_num=4", "--local_worker_num=4", "--master_port=9300"]
    assert f"--log_dir={out}/msrun_log" in msrun and msrun[-2:] == ["--device_target", "CPU"]
    merge = (tmp_path / "merge_args").read_text().splitlines()
    assert merge[0].endswith("eval.py") and merge[1:] == msrun[msrun.index("--join=True") + 2:] + ["--merge_shards"]


# ---------------------------------------------------------------- under a real msrun

def _run(argv, **env):
    result = subprocess.run(argv, capture_output=True, text=True, timeout=900, cwd=env.pop("cwd"),
                            env=dict(os.environ, **env))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.mark.slow
def test_msrun_sharded_eval_equals_one_process(dataset, tmp_path):
    _, pre, plan = dataset
    ckpt = write_tiny_checkpoint(tmp_path / "model" / "fold_0" / "checkpoint_best.ckpt", plan=plan)
    (tmp_path / "cfg.yaml").write_text("device_target: CPU\namp_level: O0\ntta_mirror: false\npostprocess: auto\n")
    args = ["eval.py", "--config", "cfg.yaml", "--ckpt", str(ckpt), "--data", str(pre), "--fold", "0", "--output"]
    _run(["bash", str(LAUNCHER), "2", *args, "ev_sharded"], cwd=tmp_path, MASTER_PORT=str(free_port()))
    decision = ckpt.parent / "postprocessing.json"
    decided_sharded = decision.read_bytes()
    decision.unlink()
    _run([sys.executable, str(ROOT / args[0]), *args[1:], "ev_single"], cwd=tmp_path)
    sharded, single = tmp_path / "ev_sharded", tmp_path / "ev_single"
    for name in ("summary.json", "metrics.csv", "postprocessing.json"):
        assert (sharded / name).read_bytes() == (single / name).read_bytes()
    assert decision.read_bytes() == decided_sharded
    assert json.loads((sharded / "eval_info.json").read_text())["shards"] == 2
    assert_same_predictions(sharded / "predictions", single / "predictions",
                            sorted(p.name for p in (single / "predictions").iterdir()))
    assert (sharded / "msrun_log" / "worker_1.log").is_file() and not shards_dir(sharded).exists()


@pytest.mark.slow
def test_msrun_sharded_predict_equals_one_process(tmp_path):
    write_tiny_kits19(tmp_path / "raw", num_cases=3)
    write_tiny_checkpoint(tmp_path / "model.ckpt")
    (tmp_path / "cfg.yaml").write_text("device_target: CPU\namp_level: O0\ntta_mirror: false\npostprocess: lcc\n")
    args = ["predict.py", "--config", "cfg.yaml", "--ckpt", "model.ckpt", "--input", "raw", "--output"]
    result = _run(["bash", str(LAUNCHER), "2", *args, "sharded"], cwd=tmp_path, MASTER_PORT=str(free_port()))
    assert "wrote 3 prediction(s)" in result.stdout
    _run([sys.executable, str(ROOT / args[0]), *args[1:], "single"], cwd=tmp_path)
    for case_id in ("case_00000", "case_00001", "case_00002"):
        assert_same_predictions(tmp_path / "sharded", tmp_path / "single", [f"{case_id}.nii.gz"])
        assert comparable_report(tmp_path / "sharded" / f"{case_id}_report.json") == \
            comparable_report(tmp_path / "single" / f"{case_id}_report.json")
    assert not shards_dir(tmp_path / "sharded").exists()

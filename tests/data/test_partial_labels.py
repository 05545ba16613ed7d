import json

import numpy as np
import pytest

from src.config import Config
from src.data.dataset import PartialLabelBatchSource, iterate_batches, make_source
from src.data.plan import Plan
from src.data.partial_labels import (DODNET_TASK_CHANNELS, mots_task_channels, partial_target, partial_targets,
                                     plan_task_channels, read_case_tasks, resolve_task_channels)
from src.data.preprocess import preprocess_dataset
from src.data.synthetic import MOTS_TASK_CHANNELS
from src.errors import UserError
from tests.data.preprocessed_fixture import DEFAULT_PATCH, make_plan, make_preprocessed_folder
from tests.data.test_io import write_mots_raw

KIDNEY = ([1, 2], [2])
COLON = (None, [1])
SPLEEN = ([1], None)


def test_organ_and_tumour_channels_from_the_task_values():
    seg = np.array([[0, 1, 2, -1]])
    target = partial_target(seg, KIDNEY)
    assert target.dtype == np.int32 and target.shape == (2, 1, 4)
    np.testing.assert_array_equal(target[0], [[0, 1, 1, -1]])
    np.testing.assert_array_equal(target[1], [[0, 0, 1, -1]])


def test_a_channel_the_task_does_not_label_is_all_ignored():
    seg = np.array([0, 1, 1, 0])
    colon = partial_target(seg, COLON)
    np.testing.assert_array_equal(colon[0], [-1, -1, -1, -1])
    np.testing.assert_array_equal(colon[1], [0, 1, 1, 0])
    spleen = partial_target(seg, SPLEEN)
    np.testing.assert_array_equal(spleen[0], [0, 1, 1, 0])
    np.testing.assert_array_equal(spleen[1], [-1, -1, -1, -1])


def test_batch_targets_follow_each_samples_task():
    segs = np.array([[0, 1, 2], [0, 1, 2]])
    targets = partial_targets(segs, np.array([1, 4], np.int32), {1: KIDNEY, 4: COLON})
    assert targets.shape == (2, 2, 3) and targets.dtype == np.int32
    np.testing.assert_array_equal(targets[0], [[0, 1, 1], [0, 0, 1]])
    np.testing.assert_array_equal(targets[1], [[-1, -1, -1], [0, 1, 0]])  # colon: label 1 is the tumour
    with pytest.raises(UserError, match=r"\[9\]"):
        partial_targets(segs, [1, 9], {1: KIDNEY, 4: COLON})


def test_given_channels_override_the_dodnet_defaults_by_name():
    tasks = {"0": "liver", "7": "adrenal"}
    resolved = resolve_task_channels(tasks, {"7": {"organ": [3], "tumor": None}}, "mots.json")
    assert resolved == {"0": DODNET_TASK_CHANNELS["liver"], "7": {"organ": [3], "tumor": None}}
    with pytest.raises(UserError, match="adrenal"):
        resolve_task_channels(tasks, None, "mots.json")


@pytest.mark.parametrize("entry", [{"organ": None, "tumor": None}, {"organ": [0]}, {"organ": []},
                                   {"organ": [True]}, {"organ": "1"}, {"lesion": [2]}, [1, 2]])
def test_malformed_channel_definitions_are_refused(entry):
    with pytest.raises(UserError, match="task_channels"):
        resolve_task_channels({"0": "liver"}, {"0": entry}, "mots.json")


def test_synthetic_mots_uses_dodnets_task_channels():
    assert MOTS_TASK_CHANNELS == DODNET_TASK_CHANNELS


def test_plan_channels_by_task_id_with_defaults_for_older_plans():
    plan = Plan.from_json(dict(make_plan([]), tasks={"1": "kidney", "4": "colon"}))
    assert plan_task_channels(plan) == {1: tuple(KIDNEY), 4: COLON}
    plan = plan.replace(task_channels={"1": {"organ": [1], "tumor": [2]}})
    assert plan_task_channels(plan)[1] == ([1], [2])
    with pytest.raises(UserError, match="no MOTS tasks"):
        plan_task_channels(Plan.from_json(make_plan([])))


def test_case_tasks_are_read_from_the_case_files(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps({"case_id": "a", "task_id": 3}))
    (tmp_path / "b.json").write_text(json.dumps({"case_id": "b", "task_id": None}))
    assert read_case_tasks(tmp_path, ["a"]) == {"a": 3}
    with pytest.raises(UserError, match="b.json has no task_id"):
        read_case_tasks(tmp_path, ["a", "b"])
    with pytest.raises(UserError, match="c.json"):
        read_case_tasks(tmp_path, ["c"])


def test_preprocessing_stores_the_task_channels_in_the_plan(tmp_path):
    raw = tmp_path / "raw"
    write_mots_raw(raw, {1: "kidney", 8: "adrenal"}, {"8": {"organ": [1], "tumor": None}})
    assert mots_task_channels(raw, {1: "kidney", 8: "adrenal"})["8"] == {"organ": [1], "tumor": None}
    plan = preprocess_dataset(raw, tmp_path / "pre", patch_budget_voxels=8 * 16 * 16, num_folds=2, workers=1,
                              progress=False, normalization="ct_clip_scale", clip_window=[-325.0, 325.0])
    saved = json.loads((tmp_path / "pre" / "plans.json").read_text())
    assert saved["task_channels"] == plan.task_channels == {
        "1": {"organ": [1, 2], "tumor": [2]}, "8": {"organ": [1], "tumor": None}}


def test_preprocessing_refuses_a_task_without_channel_definition_before_any_work(tmp_path):
    raw = tmp_path / "raw"
    write_mots_raw(raw, {8: "adrenal"})
    with pytest.raises(UserError, match="adrenal"):
        preprocess_dataset(raw, tmp_path / "pre", num_folds=2, workers=1, progress=False)
    assert not (tmp_path / "pre").exists()


def _mots_preprocessed(folder):
    """The shared fixture folder turned into a two-task MOTS folder: case 0 kidney, cases 1-2 colon."""
    plan = make_preprocessed_folder(folder)
    plan.update(dataset="mots", labels={"background": 0, "organ": 1, "tumor": 2},
                tasks={"1": "kidney", "4": "colon"})
    (folder / "plans.json").write_text(json.dumps(plan))
    tasks = {}
    for i, case_id in enumerate(plan["cases"]):
        case = json.loads((folder / f"{case_id}.json").read_text())
        case["task_id"] = tasks[case_id] = 1 if i == 0 else 4
        (folder / f"{case_id}.json").write_text(json.dumps(case))
    return Plan.from_json(plan), tasks


@pytest.mark.parametrize("train", [True, False])
def test_dodnet_batches_carry_task_ids_and_partial_targets(tmp_path, train):
    plan, tasks = _mots_preprocessed(tmp_path)
    cfg = Config(seed=3, batch_size=3, iters_per_epoch=4, val_iters=4, num_workers=1, network="dodnet",
                 deep_supervision=True)
    source = make_source(cfg, plan, tmp_path, plan.cases, train=train)
    assert isinstance(source, PartialLabelBatchSource)
    assert source.column_names == ["data", "task_id", "seg_0"]  # DoDNet: full resolution only
    seen = set()
    for data, task_ids, target in iterate_batches(cfg, plan, tmp_path, plan.cases, train=train):
        assert data.shape == (3, 1, *DEFAULT_PATCH) and data.dtype == np.float32
        assert task_ids.shape == (3,) and task_ids.dtype == np.int32
        assert target.shape == (3, 2, *DEFAULT_PATCH) and target.dtype == np.int32
        for task, sample in zip(task_ids, target):
            seen.add(int(task))
            if task == 4:  # colon: no organ annotated, tumour = label 1 (the fixture's "kidney" ball)
                assert (sample[0] == -1).all()
                assert set(np.unique(sample[1])) <= {0, 1}
            else:  # kidney: organ = labels 1 and 2, so the tumour lies inside the organ
                assert set(np.unique(sample)) <= {0, 1}
                assert (sample[0][sample[1] == 1] == 1).all()
    assert seen == set(tasks.values())


def test_dodnet_batch_matches_the_plain_batch_it_is_built_from(tmp_path):
    """Same seed, same streams: the DoDNet targets are exactly the plain label patches mapped per task."""
    plan, _ = _mots_preprocessed(tmp_path)
    plain_cfg = Config(seed=5, batch_size=2, iters_per_epoch=2, num_workers=1, deep_supervision=False)
    dodnet_cfg = Config(seed=5, batch_size=2, iters_per_epoch=2, num_workers=1, network="dodnet")
    plain = make_source(plain_cfg, plan, tmp_path, plan.cases)
    dodnet = make_source(dodnet_cfg, plan, tmp_path, plan.cases)
    for index in range(len(plain)):
        data, seg = plain[index]
        d_data, task_ids, target = dodnet[index]
        np.testing.assert_array_equal(data, d_data)
        channels = plan_task_channels(plan)
        np.testing.assert_array_equal(target, partial_targets(seg[:, 0], task_ids, channels))

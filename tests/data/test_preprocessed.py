import json

import numpy as np
import pytest

from src.data.preprocessed import fold_cases, fold_validation_cases, load_plan, load_splits, parse_fold
from src.data.preprocessed_case import load_case
from src.errors import UserError
from tests.data.preprocessed_fixture import make_preprocessed_folder, synthetic_case, write_preprocessed_case

IDS = ["case_00000", "case_00001", "case_00002"]
SPLITS = [{"train": ["case_00001", "case_00002"], "val": ["case_00000"]},
          {"train": ["case_00000"], "val": ["case_00001", "case_00002"]}]


def _set_splits(folder, splits):
    plan = json.loads((folder / "plans.json").read_text())
    plan["num_folds"] = len(splits)
    (folder / "plans.json").write_text(json.dumps(plan))
    (folder / "splits.json").write_text(json.dumps(splits))
    return plan


@pytest.fixture
def pre(tmp_path):
    make_preprocessed_folder(tmp_path)
    _set_splits(tmp_path, SPLITS)
    return tmp_path


def test_numbered_and_all_folds(pre):
    plan = load_plan(pre)
    assert fold_cases(pre, plan, 1) == (["case_00000"], ["case_00001", "case_00002"])
    assert fold_cases(pre, plan, "all") == (IDS, IDS)
    assert fold_cases(pre, plan.replace(cases=["b", "a"]), "ALL") == (["a", "b"], ["a", "b"])
    assert fold_validation_cases(pre, "0") == ["case_00000"]


@pytest.mark.parametrize("fold", [2, -1, 7])
def test_a_fold_that_does_not_exist_names_the_folds_that_do(pre, fold):
    with pytest.raises(UserError, match=rf"^--fold {fold} does not exist: .* has folds 0-1 and 'all'$"):
        fold_cases(pre, load_plan(pre), fold)
    with pytest.raises(UserError, match=rf"--fold {fold} does not exist"):
        fold_validation_cases(pre, fold)


def test_a_folder_without_folds_offers_only_all(tmp_path):
    make_preprocessed_folder(tmp_path, shapes={"case_00000": (20, 24, 24)})
    plan = _set_splits(tmp_path, [])
    assert load_plan(tmp_path).to_json() == plan
    assert fold_cases(tmp_path, load_plan(tmp_path), "all") == (["case_00000"], ["case_00000"])
    with pytest.raises(UserError, match=r"--fold 0 does not exist: .* no cross-validation folds .*only 'all'"):
        fold_cases(tmp_path, load_plan(tmp_path), 0)


def test_a_non_number_fold_is_a_user_error(pre):
    with pytest.raises(UserError, match="fold number or 'all'"):
        fold_cases(pre, load_plan(pre), "x")
    assert parse_fold(" all ") == "all" and parse_fold("3") == 3


def test_evaluation_needs_a_numbered_fold_with_validation_cases(pre):
    with pytest.raises(UserError, match="fold number to evaluate"):
        fold_validation_cases(pre, "all")
    _set_splits(pre, [{"train": IDS, "val": []}])
    with pytest.raises(UserError, match="no validation cases"):
        fold_validation_cases(pre, 0)


def test_missing_and_malformed_index_files(tmp_path, pre):
    with pytest.raises(UserError, match="run prepare.py preprocess first"):
        load_plan(tmp_path / "nowhere")
    (pre / "splits.json").write_text(json.dumps({"train": []}))
    with pytest.raises(UserError, match="list of"):
        load_splits(pre)
    (pre / "plans.json").write_text(json.dumps({"num_classes": 3}))
    with pytest.raises(UserError, match="lacks patch_size"):
        load_plan(pre)


def _one_line_refusal(pre, match):
    with pytest.raises(UserError, match=match) as caught:
        load_plan(pre)
    assert "\n" not in str(caught.value)


def test_a_case_of_another_plan_is_refused(pre):
    """The observed failure: a case resampled to a new spacing under the old plans.json."""
    plan = load_plan(pre)
    other = plan.replace(target_spacing=[2.0, 1.0, 1.0]).identity
    data, seg = synthetic_case((30, 48, 48), seed=9)
    write_preprocessed_case(pre, "case_00001", data, seg, plan_id=other)
    _one_line_refusal(pre, rf"inconsistent: case case_00001 was written for plan {other}.*preprocess again")


def test_a_case_json_of_another_plan_next_to_an_old_npz_is_refused(pre):
    """A run killed between a case's json and its npz."""
    case_json = pre / "case_00002.json"
    properties = json.loads(case_json.read_text())
    properties["plan_id"] = "sha256:0123456789abcdef"
    case_json.write_text(json.dumps(properties))
    _one_line_refusal(pre, "case case_00002 was written for plan sha256:0123456789abcdef")


def test_cases_without_plan_identity_and_missing_cases_are_refused(pre):
    case_json = pre / "case_00000.json"
    properties = json.loads(case_json.read_text())
    del properties["plan_id"]
    case_json.write_text(json.dumps(properties))
    _one_line_refusal(pre, "case case_00000 was written for no plan")
    (pre / "case_00000.npz").unlink()
    _one_line_refusal(pre, "case case_00000 of plans.json has no case_00000.npz")


@pytest.mark.parametrize("splits, match", [
    (SPLITS[:1], "splits.json has 1 folds, plans.json 2"),
    ([SPLITS[0], {"train": ["case_00000"], "val": ["case_00001"]}], "fold 1 of splits.json does not split"),
    ([SPLITS[0], {"train": IDS, "val": ["case_00001"]}], "fold 1 of splits.json does not split"),
    ([SPLITS[0], {"train": ["case_00000"], "val": ["case_00001", "case_00002", "case_00009"]}], "does not split"),
])
def test_splits_that_do_not_belong_to_the_plan_are_refused(pre, splits, match):
    (pre / "splits.json").write_text(json.dumps(splits))
    _one_line_refusal(pre, match)
    with pytest.raises(UserError, match=match):
        fold_validation_cases(pre, 0)


def test_custom_splits_over_the_plan_cases_are_accepted(pre):
    custom = [{"train": ["case_00000", "case_00001"], "val": ["case_00002"]},
              {"train": ["case_00002"], "val": ["case_00000", "case_00001"]}]
    (pre / "splits.json").write_text(json.dumps(custom))
    assert fold_cases(pre, load_plan(pre), 0) == (["case_00000", "case_00001"], ["case_00002"])


def test_load_case_refuses_an_npz_of_another_plan(pre):
    identity = load_plan(pre).identity
    case = load_case(pre, "case_00000", identity)
    assert case.data.shape[1:] == case.seg.shape
    data, seg = synthetic_case((20, 20, 20), seed=1)
    np.savez(pre / "case_00000.npz", data=data, seg=seg)  # no plan_id member
    with pytest.raises(UserError, match="case_00000.npz was written for plan None"):
        load_case(pre, "case_00000", identity)
    write_preprocessed_case(pre, "case_00000", data, seg, plan_id="sha256:ffffffffffffffff")
    with pytest.raises(UserError, match="written for plan sha256:ffffffffffffffff, not for the plan in use"):
        load_case(pre, "case_00000", identity)
    assert load_case(pre, "case_00000").seg.shape == (20, 20, 20)  # no plan given: no check

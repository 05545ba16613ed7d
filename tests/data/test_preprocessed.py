import json

import pytest

from src.data.preprocessed import fold_cases, fold_validation_cases, load_plan, load_splits, parse_fold
from src.errors import UserError

SPLITS = [{"train": ["case_00001", "case_00002"], "val": ["case_00000"]},
          {"train": ["case_00000"], "val": ["case_00001", "case_00002"]}]
PLAN = {"num_classes": 3, "patch_size": [8, 8, 8], "features": [4, 8], "conv_kernel_sizes": [[3, 3, 3]] * 2,
        "strides": [[1, 1, 1], [2, 2, 2]]}


@pytest.fixture
def pre(tmp_path):
    (tmp_path / "splits.json").write_text(json.dumps(SPLITS))
    (tmp_path / "plans.json").write_text(json.dumps(PLAN))
    return tmp_path


def test_numbered_and_all_folds(pre):
    assert fold_cases(pre, PLAN, 1) == (["case_00000"], ["case_00001", "case_00002"])
    everything = ["case_00000", "case_00001", "case_00002"]
    assert fold_cases(pre, PLAN, "all") == (everything, everything)
    assert fold_cases(pre, dict(PLAN, cases=["b", "a"]), "ALL") == (["a", "b"], ["a", "b"])
    assert fold_validation_cases(pre, "0") == ["case_00000"]


@pytest.mark.parametrize("fold, message", [(2, "out of range"), ("x", "fold number or 'all'"), (-1, "out of range")])
def test_unknown_folds_are_user_errors(pre, fold, message):
    with pytest.raises(UserError, match=message):
        fold_cases(pre, PLAN, fold)


def test_evaluation_needs_a_numbered_fold_with_validation_cases(pre):
    with pytest.raises(UserError, match="fold number to evaluate"):
        fold_validation_cases(pre, "all")
    (pre / "splits.json").write_text(json.dumps([{"train": ["a"], "val": []}]))
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
    assert parse_fold(" all ") == "all" and parse_fold("3") == 3

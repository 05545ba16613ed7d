"""The preprocessed folder: ``plans.json`` (the plan), ``splits.json`` (the folds), and whether its cases
belong to that plan.

Training, evaluation and the offline (Ascend 310) flow all read them through here, so a missing, broken
or inconsistent folder gives the same one-line error whichever command meets it first.

How a folder stays consistent (``prepare.py preprocess`` writes, ``load_plan`` checks):

- Every file is written to a temporary and renamed over its name (``src.files.commit``): no file is ever
  half written, and leftover temporaries of killed runs are removed by the next run.
- Each case's ``<case>.json`` and ``<case>.npz`` carry ``plan_id``, a digest of the plan entries that
  shape the stored voxels (target spacing, normalization, intensity statistics): ``Plan.identity``.
- A run writes every case (its json first, then its npz), then ``splits.json``, then ``plans.json``: the
  plan is the commit point. Only after it do the files of cases the new plan does not list go.
- :func:`load_plan` refuses the folder when a case the plan lists is missing or carries another
  ``plan_id``, or when ``splits.json`` does not hold the plan's ``num_folds`` folds over exactly the plan's
  cases (custom folds over the same cases are fine).

So a run killed at any instant leaves the old folder (nothing of it replaced yet, or the same plan being
rewritten), the new one (``plans.json`` written), or a folder every reader refuses with one line saying to
run preprocessing again. A rerun with another plan (target spacing, dataset) replaces the cases as a
whole; a rerun with the same plan rewrites them in place, the folder staying readable throughout.
Staging a complete copy next to the folder and swapping it in was not chosen: it doubles the disk space
of a dataset that is tens of GB, and a folder cannot replace another in one rename anyway.
"""
from pathlib import Path

from src.data.plan import PLAN_FILE, PREPROCESS_HINT, RERUN_HINT, Plan
from src.data.preprocessed_case import load_case_properties
from src.errors import UserError
from src.files import read_json


def _inconsistent(pre_dir, what: str) -> UserError:
    return UserError(f"preprocessed folder {pre_dir} is inconsistent: {what}; {RERUN_HINT}")


def check_cases_match_plan(pre_dir, plan: Plan) -> None:
    """Every case the plan lists has its npz and a json written for this plan (``plan_id``)."""
    cases = plan.cases
    if not cases or not all(isinstance(c, str) for c in cases):
        raise _inconsistent(pre_dir, "plans.json lists no cases")
    identity = plan.identity
    for case_id in cases:
        if not (Path(pre_dir) / f"{case_id}.npz").is_file():
            raise _inconsistent(pre_dir, f"case {case_id} of plans.json has no {case_id}.npz")
        properties = load_case_properties(pre_dir, case_id, f"; {RERUN_HINT}")
        recorded = properties.get("plan_id") if isinstance(properties, dict) else None
        if recorded != identity:
            written_for = "no plan (an older version wrote it)" if recorded is None else f"plan {recorded}"
            raise _inconsistent(pre_dir, f"case {case_id} was written for {written_for}, plans.json is {identity}")


def check_splits_match_plan(pre_dir, splits: list, plan: Plan) -> None:
    """``splits.json`` holds ``num_folds`` folds, each a disjoint train/val partition of the plan's cases."""
    expected = plan.num_folds
    if not isinstance(expected, int):
        raise _inconsistent(pre_dir, "plans.json lacks num_folds (an older version wrote it)")
    if len(splits) != expected:
        raise _inconsistent(pre_dir, f"splits.json has {len(splits)} folds, plans.json {expected}")
    cases = set(plan.cases)
    for index, split in enumerate(splits):
        train, val = set(split["train"]), set(split["val"])
        if train & val or train | val != cases:
            raise _inconsistent(pre_dir, f"fold {index} of splits.json does not split the {len(cases)} cases "
                                         "of plans.json into training and validation cases")


def _read_plan(pre_dir) -> Plan:
    return Plan.read(Path(pre_dir) / PLAN_FILE)


def _read_splits(pre_dir) -> list:
    splits = read_json(Path(pre_dir) / "splits.json", "splits file", PREPROCESS_HINT)
    if not isinstance(splits, list) or not all(isinstance(s, dict) and "train" in s and "val" in s for s in splits):
        raise UserError(f"splits file {Path(pre_dir) / 'splits.json'} must be a list of {{train, val}} folds")
    return splits


def load_plan(pre_dir) -> Plan:
    """plans.json, after checking that the folder's cases and folds belong to it (see the module doc)."""
    plan = _read_plan(pre_dir)
    check_cases_match_plan(pre_dir, plan)
    check_splits_match_plan(pre_dir, _read_splits(pre_dir), plan)
    return plan


def load_splits(pre_dir) -> list:
    """splits.json, checked against the folds and cases plans.json records."""
    splits = _read_splits(pre_dir)
    check_splits_match_plan(pre_dir, splits, _read_plan(pre_dir))
    return splits


def parse_fold(fold):
    """``0``..``N-1`` as int, or ``"all"``."""
    if isinstance(fold, str) and fold.strip().lower() == "all":
        return "all"
    try:
        return int(fold)
    except (TypeError, ValueError):
        raise UserError(f"--fold must be a fold number or 'all', got {fold!r}") from None


def describe_folds(count: int) -> str:
    if count == 0:
        return "no cross-validation folds (fewer than 2 cases), only 'all'"
    if count == 1:
        return "fold 0 and 'all'"
    return f"folds 0-{count - 1} and 'all'"


def _numbered_fold(splits: list, fold: int, pre_dir) -> dict:
    if not 0 <= fold < len(splits):
        raise UserError(f"--fold {fold} does not exist: {Path(pre_dir)} has {describe_folds(len(splits))}")
    return splits[fold]


def fold_cases(pre_dir, plan: Plan, fold) -> tuple:
    """``(train_ids, val_ids)``; fold ``all`` trains on every case and validates on all of them (nnU-Net)."""
    fold = parse_fold(fold)
    if fold == "all":
        cases = sorted(plan.cases)
        if not cases:
            raise UserError(f"no cases listed in {Path(pre_dir) / 'plans.json'}")
        return cases, cases
    split = _numbered_fold(load_splits(pre_dir), fold, pre_dir)
    if not split["train"]:
        raise UserError(f"fold {fold} of {Path(pre_dir) / 'splits.json'} has no training cases")
    return list(split["train"]), list(split["val"])


def fold_validation_cases(pre_dir, fold) -> list:
    """The validation case ids of a numbered fold (evaluation has no 'all': it would score training cases)."""
    fold = parse_fold(fold)
    if fold == "all":
        raise UserError("--fold must be a fold number to evaluate held-out cases, got 'all'")
    cases = list(_numbered_fold(load_splits(pre_dir), fold, pre_dir)["val"])
    if not cases:
        raise UserError(f"fold {fold} has no validation cases in {Path(pre_dir) / 'splits.json'}")
    return cases

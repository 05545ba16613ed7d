"""The preprocessed folder's two index files: ``plans.json`` (the plan) and ``splits.json`` (the folds).

Training, evaluation and the offline (Ascend 310) flow all read them through here, so a missing or
broken file gives the same one-line error whichever command meets it first.
"""
from pathlib import Path

from src.files import read_json
from src.errors import UserError

PREPROCESS_HINT = " (run prepare.py preprocess first)"

# Plan entries that fix the network's shapes: a checkpoint only fits data planned with the same values.
TOPOLOGY_KEYS = ("num_channels", "num_classes", "patch_size", "features", "conv_kernel_sizes", "strides")


def load_plan(pre_dir) -> dict:
    plan = read_json(Path(pre_dir) / "plans.json", "plans file", PREPROCESS_HINT)
    missing = [key for key in TOPOLOGY_KEYS if key not in plan and key != "num_channels"]
    if missing:
        raise UserError(f"plans file {Path(pre_dir) / 'plans.json'} lacks {', '.join(missing)}")
    return plan


def load_splits(pre_dir) -> list:
    splits = read_json(Path(pre_dir) / "splits.json", "splits file", PREPROCESS_HINT)
    if not isinstance(splits, list) or not all(isinstance(s, dict) and "train" in s and "val" in s for s in splits):
        raise UserError(f"splits file {Path(pre_dir) / 'splits.json'} must be a list of {{train, val}} folds")
    return splits


def parse_fold(fold):
    """``0``..``N-1`` as int, or ``"all"``."""
    if isinstance(fold, str) and fold.strip().lower() == "all":
        return "all"
    try:
        return int(fold)
    except (TypeError, ValueError):
        raise UserError(f"--fold must be a fold number or 'all', got {fold!r}") from None


def _numbered_fold(splits: list, fold: int, pre_dir) -> dict:
    if not 0 <= fold < len(splits):
        raise UserError(f"--fold {fold} is out of range: {Path(pre_dir) / 'splits.json'} has {len(splits)} folds")
    return splits[fold]


def fold_cases(pre_dir, plan: dict, fold) -> tuple:
    """``(train_ids, val_ids)``; fold ``all`` trains on every case and validates on all of them (nnU-Net)."""
    fold = parse_fold(fold)
    if fold == "all":
        cases = sorted(plan.get("cases") or [])
        if not cases:
            cases = sorted({case for split in load_splits(pre_dir) for case in split["train"] + split["val"]})
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

"""A preprocessing run killed at any write leaves the old folder, the new one, or a refused one.

The kill is injected at the N-th rename of an output (``src.files.commit``), for every N until the run
completes; after each, the folder is read the way training and evaluation read it.
"""
import hashlib
import json
import shutil

import numpy as np
import pytest

from src.data.preprocess import preprocess_dataset
from src.data.plan import Plan
from src.data.preprocessed import fold_validation_cases, load_plan, load_splits
from src.data.preprocessed_case import load_case
from src.errors import UserError
from tests.data.test_io import write_kits_case
from tests.helpers import Killed, dead_pid, killed_at_commit

OLD_SPACING = [2.5, 1.6, 1.6]
NEW_SPACING = [2.0, 1.2, 1.2]


def _raw(root, count=3, first=0):
    for i in range(first, first + count):
        write_kits_case(root, f"case_{i:05d}", shape=(14 + i % 3, 18, 20), seed=i, spacing=(2.5, 0.8, 0.8))
    return root


def _preprocess(raw, out, spacing):
    return preprocess_dataset(raw, out, target_spacing=spacing, patch_budget_voxels=8 * 16 * 16, num_folds=2,
                              workers=1, progress=False, foreground_pool_size=3000)


def folder_state(pre):
    """``"refused"`` when a reader refuses the folder, else a digest of everything the readers return."""
    try:
        plan = load_plan(pre)
        splits = load_splits(pre)
        for fold in range(len(splits)):
            fold_validation_cases(pre, fold)
        digest = hashlib.sha256(json.dumps([plan.to_json(), splits], sort_keys=True).encode())
        for case_id in plan.cases:
            case = load_case(pre, case_id, plan.identity)
            digest.update((pre / f"{case_id}.json").read_bytes())
            for array in (case.data, case.seg, *case.fg_locations.values()):
                digest.update(np.ascontiguousarray(array).tobytes())
            del case
    except UserError:
        return "refused"
    return digest.hexdigest()


def _run_killed_at(n, raw, out, spacing) -> bool:
    """Preprocess with a kill at the ``n``-th commit; True if the run completed before it."""
    try:
        with killed_at_commit(n):
            _preprocess(raw, out, spacing)
    except Killed:
        return False
    return True


def _temporaries(folder):
    return [p.name for p in folder.iterdir() if ".tmp-" in p.name]


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    return _raw(tmp_path_factory.mktemp("raw"))


@pytest.fixture(scope="module")
def references(raw, tmp_path_factory):
    """(old folder, its state, state of a clean run with the new spacing)."""
    old = tmp_path_factory.mktemp("old") / "pre"
    _preprocess(raw, old, OLD_SPACING)
    new = tmp_path_factory.mktemp("new") / "pre"
    _preprocess(raw, new, NEW_SPACING)
    old_state, new_state = folder_state(old), folder_state(new)
    assert "refused" not in (old_state, new_state) and old_state != new_state
    return old, old_state, new_state


@pytest.mark.parametrize("start", ["empty", "existing"])
def test_a_kill_at_every_write_leaves_old_new_or_refused_and_a_rerun_completes(tmp_path, raw, references, start):
    old, old_state, new_state = references
    before = "refused" if start == "empty" else old_state  # an empty folder has no plans.json
    observed = []
    for n in range(1, 100):
        out = tmp_path / f"kill_{n}"
        if start == "existing":
            shutil.copytree(old, out)
        completed = _run_killed_at(n, raw, out, NEW_SPACING)
        state = folder_state(out)
        assert state in (before, new_state, "refused"), f"kill at write {n} left a folder of neither plan"
        assert not _temporaries(out)
        if completed:
            assert state == new_state
            break
        observed.append("old" if state == before != "refused" else "new" if state == new_state else "refused")
        _preprocess(raw, out, NEW_SPACING)  # the rerun completes and gives the clean run's folder
        assert folder_state(out) == new_state and not _temporaries(out)
        shutil.rmtree(out)
    else:
        pytest.fail("the run never completed")
    # 3 cases x (json, npz) + splits.json + plans.json, each of them a kill point
    assert len(observed) == 8
    assert observed[-1] == "refused"  # killed at plans.json: new cases under the old plan, refused
    if start == "existing":
        assert observed[0] == "old"  # killed before anything was replaced


def test_a_mixed_folder_is_refused_by_every_reader(tmp_path, raw, references):
    """The observed failure: cases of two spacings under the old plans.json."""
    old = references[0]
    out = tmp_path / "pre"
    shutil.copytree(old, out)
    assert not _run_killed_at(4, raw, out, NEW_SPACING)  # case 0 and case 1's json replaced
    shapes = {json.loads((out / f"case_{i:05d}.json").read_text())["target_spacing"][1] for i in range(3)}
    assert shapes == {1.6, 1.2}
    with pytest.raises(UserError, match="inconsistent: case case_00000 was written for plan"):
        load_plan(out)
    old_plan = json.loads((old / "plans.json").read_text())
    with pytest.raises(UserError, match="case_00000.npz was written for plan"):
        load_case(out, "case_00000", Plan.from_json(old_plan).identity)


def test_temporaries_of_killed_runs_are_removed(tmp_path, raw):
    out = tmp_path / "pre"
    out.mkdir()
    gone = dead_pid()
    leftovers = [out / f"case_00000.npz.tmp-{gone}", out / f"plans.json.tmp-{gone}"]
    for path in leftovers:
        path.write_bytes(b"half written")
    _preprocess(raw, out, OLD_SPACING)
    assert not any(path.exists() for path in leftovers)
    assert folder_state(out) != "refused"


def test_another_dataset_replaces_the_old_cases_as_a_whole(tmp_path, raw, references):
    old = references[0]
    out = tmp_path / "pre"
    shutil.copytree(old, out)
    (out / "notes.json").write_text(json.dumps({"case_id": "mine"}))  # not a case file: kept
    other = _raw(tmp_path / "other", count=2, first=10)
    plan = _preprocess(other, out, OLD_SPACING)
    assert plan.cases == ["case_00010", "case_00011"]
    assert folder_state(out) != "refused"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["plans.json", "splits.json", "notes.json"] + [f"case_0001{i}.{ext}" for i in (0, 1) for ext in ("json", "npz")])


def test_the_same_plan_rewrites_the_cases_consistently(tmp_path, raw, references):
    old, old_state, _ = references
    out = tmp_path / "pre"
    shutil.copytree(old, out)
    _preprocess(raw, out, OLD_SPACING)
    assert folder_state(out) == old_state

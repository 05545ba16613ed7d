"""train.py trains the locator after the main network and stores it in the fold's checkpoints, completing
the store of a run killed between the two checkpoints without training it again."""
import numpy as np
import pytest

import src.files
from src.runtime.checkpoint import read_training_checkpoint
from src.train import locator_training
from src.train.locator_training import (CHECKPOINTS, PREFIX, attach_locator, same_locator, stored_locator,
                                        train_and_attach)
from src.train.run_folder import BEST, LATEST
from tests.infer.tiny_model import write_tiny_checkpoint
from src.train.trainer import train_fold
from src.data.preprocessed import fold_cases, load_plan
from tests.train.tiny_training import tiny_config


@pytest.mark.slow
def test_train_fold_with_locator_iters_stores_the_locator_in_both_checkpoints(tiny_data, tmp_path):
    cfg = tiny_config(epochs=1, locator_iters=2, locator_patch_size=[8, 8, 8], locator_spacing_mm=2.0)
    train_fold(cfg, tiny_data, 0, tmp_path)
    plan = load_plan(tiny_data)
    for name in ("checkpoint_best.ckpt", "checkpoint_latest.ckpt"):
        params, meta = read_training_checkpoint(tmp_path / "fold_0" / name)
        assert meta["locator"]["patch_size"] == [8, 8, 8]
        assert any(key.startswith(PREFIX) for key in params)
        assert meta["locator_check"]["cases"] == len(fold_cases(tiny_data, plan, 0)[1])
    log = (tmp_path / "fold_0" / "training_log.txt").read_text()
    assert "locator: 2 steps" in log and "locator: held-out check: on " in log


@pytest.mark.slow
def test_a_run_killed_between_the_two_locator_writes_resumes_without_training_it_again(tiny_data, tmp_path,
                                                                                      monkeypatch):
    cfg = tiny_config(epochs=1, locator_iters=2, locator_patch_size=[8, 8, 8], locator_spacing_mm=2.0)
    real_commit, latest_writes = src.files.commit, []

    def kill_at_the_locator_in_the_latest(tmp, path):
        if path.name == LATEST:
            latest_writes.append(path)
            if len(latest_writes) == 2:   # the epoch's checkpoint, then the one with the locator
                raise KeyboardInterrupt("killed")
        real_commit(tmp, path)

    monkeypatch.setattr(src.files, "commit", kill_at_the_locator_in_the_latest)
    with pytest.raises(KeyboardInterrupt):
        train_fold(cfg, tiny_data, 0, tmp_path)
    monkeypatch.setattr(src.files, "commit", real_commit)
    fold_dir = tmp_path / "fold_0"
    assert stored_locator(fold_dir / BEST) is not None and stored_locator(fold_dir / LATEST) is None
    train_fold(cfg, tiny_data, 0, tmp_path, resume=True)
    assert same_locator(stored_locator(fold_dir / BEST), stored_locator(fold_dir / LATEST))
    log = (fold_dir / "training_log.txt").read_text()
    # trained in the first session only
    assert log.count("locator: step 2/2") == 1 and "not trained again" in log


def test_no_locator_without_locator_iters(tiny_data, tmp_path):
    cfg = tiny_config(epochs=1, iters_per_epoch=1, val_iters=0)
    train_fold(cfg, tiny_data, 0, tmp_path)
    params, meta = read_training_checkpoint(tmp_path / "fold_0" / "checkpoint_best.ckpt")
    assert "locator" not in meta and not any(key.startswith(PREFIX) for key in params)


# ---------------------------------------------------------------- storing it: a kill between the two writes

def fold_with_checkpoints(fold_dir):
    for seed, name in enumerate(CHECKPOINTS):
        write_tiny_checkpoint(fold_dir / name, seed=seed)
    return fold_dir


class FakeTraining:
    """``train_locator`` without the training: a freshly initialised locator, a new one per call."""

    def __init__(self):
        self.calls = 0

    def __call__(self, cfg, plan, pre_dir, case_ids, log=print):
        import mindspore as ms

        from src.models.locator import build_locator_network

        self.calls += 1
        lplan = locator_training.locator_plan(cfg, plan)
        ms.set_seed(100 + self.calls)
        return build_locator_network(lplan), lplan, {"iters": 0, "seconds": 0.0, "last_loss": 0.0}


@pytest.fixture
def fake_training(monkeypatch):
    fake = FakeTraining()
    monkeypatch.setattr(locator_training, "train_locator", fake)
    return fake


def locator_setup():
    from tests.infer.tiny_model import tiny_config as infer_config, tiny_plan

    return infer_config(locator_patch_size=[8, 8, 8], locator_spacing_mm=3.0), tiny_plan()


def attach(fold_dir, lines=None):
    cfg, plan = locator_setup()
    return train_and_attach(cfg, plan, None, [], fold_dir, log=(lines if lines is not None else []).append)


def carried(fold_dir):
    return {name: stored_locator(fold_dir / name) for name in CHECKPOINTS}


def killed_at_commit(monkeypatch, number):
    """Make the ``number``-th (from 0) ``src.files.commit`` from now on raise, as a kill at that rename."""
    real_commit, seen = src.files.commit, []

    def commit(tmp, path):
        seen.append(path)
        if len(seen) - 1 == number:
            raise KeyboardInterrupt(f"killed before renaming {path}")
        real_commit(tmp, path)

    monkeypatch.setattr(src.files, "commit", commit)
    return lambda: monkeypatch.setattr(src.files, "commit", real_commit)


@pytest.mark.parametrize("kill_at", [0, 1])
def test_a_kill_while_storing_the_locator_is_completed_without_training_it_again(tmp_path, fake_training,
                                                                              monkeypatch, kill_at):
    fold_dir = fold_with_checkpoints(tmp_path)
    revive = killed_at_commit(monkeypatch, kill_at)
    with pytest.raises(KeyboardInterrupt):
        attach(fold_dir)
    revive()
    state = carried(fold_dir)
    # the kill left each checkpoint whole, with the locator or without it, the best first
    assert [state[name] is not None for name in CHECKPOINTS] == [kill_at == 1, False]
    lines = []
    attach(fold_dir, lines)
    state = carried(fold_dir)
    assert state[BEST] is not None and state[LATEST] is not None
    assert same_locator(state[BEST], state[LATEST])
    assert fake_training.calls == (1 if kill_at == 1 else 2)   # the stored locator was not trained again
    if kill_at == 1:
        assert any("completed checkpoint_latest.ckpt with the locator of checkpoint_best.ckpt" in l for l in lines)
    # the main networks are untouched: each checkpoint keeps its own weights
    for seed, name in enumerate(CHECKPOINTS):
        params, _ = read_training_checkpoint(fold_dir / name)
        reference, _ = read_training_checkpoint(write_tiny_checkpoint(tmp_path / "ref" / name, seed=seed))
        assert all(np.array_equal(params[k].asnumpy(), reference[k].asnumpy()) for k in reference)


def test_a_kill_while_completing_is_completed_again(tmp_path, fake_training, monkeypatch):
    fold_dir = fold_with_checkpoints(tmp_path)
    revive = killed_at_commit(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        attach(fold_dir)
    revive()
    revive = killed_at_commit(monkeypatch, 0)   # the completion's one write
    with pytest.raises(KeyboardInterrupt):
        attach(fold_dir)
    revive()
    assert carried(fold_dir)[LATEST] is None
    attach(fold_dir)
    state = carried(fold_dir)
    assert same_locator(state[BEST], state[LATEST]) and fake_training.calls == 1


def test_a_finished_fold_keeps_its_locator(tmp_path, fake_training):
    fold_dir = fold_with_checkpoints(tmp_path)
    attach(fold_dir)
    before = {name: (fold_dir / name).read_bytes() for name in CHECKPOINTS}
    lines = []
    assert attach(fold_dir, lines) == {"reused": BEST}
    assert fake_training.calls == 1 and any("not trained again" in line for line in lines)
    assert {name: (fold_dir / name).read_bytes() for name in CHECKPOINTS} == before


def test_different_locators_in_the_two_checkpoints_are_reported(tmp_path, fake_training):
    fold_dir = fold_with_checkpoints(tmp_path)
    attach(fold_dir)
    cfg, plan = locator_setup()
    other, lplan, _ = fake_training(cfg, plan, None, [])   # the same settings, another initialisation
    attach_locator(fold_dir / LATEST, other, lplan)
    before = {name: (fold_dir / name).read_bytes() for name in CHECKPOINTS}
    lines = []
    assert attach(fold_dir, lines) == {"differ": list(CHECKPOINTS)}
    assert any(line.startswith("warning:") and "different locators" in line for line in lines)
    assert {name: (fold_dir / name).read_bytes() for name in CHECKPOINTS} == before


def test_a_locator_made_for_other_settings_is_not_copied(tmp_path, fake_training):
    fold_dir = fold_with_checkpoints(tmp_path)
    cfg, plan = locator_setup()
    old, lplan, _ = fake_training(cfg.replace(locator_patch_size=[16, 8, 8]), plan, None, [])
    attach_locator(fold_dir / BEST, old, lplan)
    attach(fold_dir)
    state = carried(fold_dir)
    assert fake_training.calls == 2 and same_locator(state[BEST], state[LATEST])
    assert state[BEST][1]["patch_size"] == [8, 8, 8]


def test_a_stored_locator_without_a_check_is_checked_not_trained_again(tmp_path, fake_training):
    fold_dir = fold_with_checkpoints(tmp_path)
    cfg, plan = locator_setup()
    old, lplan, _ = fake_training(cfg, plan, None, [])
    for name in CHECKPOINTS:  # as an older version stored it: no check
        attach_locator(fold_dir / name, old, lplan)
    lines = []
    result = attach(fold_dir, lines)
    assert result["reused"] == BEST and result["check"]["cases"] == 0 and fake_training.calls == 1
    state = carried(fold_dir)
    assert state[BEST][2] == state[LATEST][2] == result["check"]
    assert same_locator(state[BEST], state[LATEST])
    assert any(line.startswith("locator: held-out check:") for line in lines)
    assert not any(line.startswith("note:") for line in lines)  # no postprocessing decision to re-make


def test_checking_a_stored_locator_says_the_postprocessing_decision_must_be_made_again(tmp_path, fake_training):
    from src.infer.postprocess import POSTPROCESSING_FILE, save_postprocessing

    fold_dir = fold_with_checkpoints(tmp_path)
    cfg, plan = locator_setup()
    old, lplan, _ = fake_training(cfg, plan, None, [])
    for name in CHECKPOINTS:
        attach_locator(fold_dir / name, old, lplan)
    save_postprocessing({"all_foreground": True, "per_class": []}, fold_dir / POSTPROCESSING_FILE,
                        models=[fold_dir / BEST])
    lines = []
    attach(fold_dir, lines)
    assert any(line.startswith("note:") and "--postprocess auto" in line for line in lines)


def test_the_check_runs_the_locator_on_the_preprocessed_validation_cases(preprocessed_dir, restore_mode):
    from src.data.preprocessed_case import load_case
    from src.infer.sliding_window import window_layout
    from src.models.locator import build_locator_network

    plan = load_plan(preprocessed_dir)
    cfg, _ = locator_setup()
    lplan = locator_training.locator_plan(cfg, plan)
    case_ids = sorted(path.name[:-len(".npz")] for path in preprocessed_dir.glob("*.npz"))[:2]
    check = locator_training.check_on_cases(cfg, plan, preprocessed_dir, case_ids, build_locator_network(lplan),
                                            lplan)
    assert check["cases"] == 2 and set(check["per_case"]) == set(case_ids)
    for case_id, result in check["per_case"].items():
        shape = load_case(preprocessed_dir, case_id, plan.identity).seg.shape
        assert result["windows"][1] == len(window_layout(shape, plan.patch_size, cfg.step_size).starts)

"""A training run killed at any write leaves a fold folder whose best/latest checkpoints and log agree,
or that ``--resume`` repairs; ``--resume`` then ends with the weights of a run that was never killed.

Every kill point costs one training run if each is a separate killed process, too slow here (about 15 s a
run on two cores). A kill leaves exactly what the folder held just before that write began (plus the
write's temporary), and training is deterministic, so one uninterrupted run whose write hooks copy the
folder at that moment yields the folder of a kill at every write: each ``src.files.commit`` (checkpoints,
best copy, progress PNG, config, plans) and each log append, for which a torn half line is one more state.
Each copy is checked as a kill left it, then ``--resume`` repairs it (without training) and the result is
checked again. Two runs complete the picture: one really killed by a BaseException at the write of the
best checkpoint (the moment the old trainer lost), and one resumed from an epoch-1 kill to the end.

The EMA is scripted so that epochs 1 and 3 are new bests and epoch 2 is not: every kind of epoch occurs.
"""
import hashlib
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

import src.files
from src.errors import UserError
from src.train import run_state, trainer
from src.runtime.checkpoint import read_training_checkpoint
from src.runtime.device import setup_device
from src.train.run_folder import BEST, LATEST, LOG, PREVIOUS
from src.train.trainer import train_fold
from tests.helpers import dead_pid
from tests.train.tiny_training import tiny_config

setup_device("CPU", mode="pynative")

EPOCHS = 3
BEST_AFTER = {1: 1, 2: 1, 3: 3}  # the best epoch once epochs 1..3 are finished, by the scripted EMA
_SCRIPTED_EMA = {None: 0.5, 0.5: 0.4, 0.4: 0.6}
_EPOCH_LINE = re.compile(r"^\S+ \S+  epoch (\d+)/\d+  train_loss ")


def scripted_ema(ema, value, alpha):
    # a function of the previous EMA only, so a resumed run continues the same sequence
    return _SCRIPTED_EMA[ema]


def config():
    return tiny_config(epochs=EPOCHS, iters_per_epoch=1, val_iters=1)


@pytest.fixture(autouse=True)
def scripted_best_epochs(monkeypatch):
    monkeypatch.setattr(trainer, "update_ema", scripted_ema)


def sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class KillPoints:
    """Write hooks that copy the fold folder as a kill at that instant leaves it."""

    def __init__(self, fold_dir: Path, root: Path):
        self.fold_dir, self.root = fold_dir, root
        self.states = []              # (description, out folder holding fold_0)
        self.latest_by_epoch = {}     # epoch -> sha256 of the checkpoint_latest written for it
        self.real_commit = src.files.commit
        self.real_append = run_state.append_line

    def _copy(self, what: str) -> Path:
        out = self.root / f"{len(self.states):02d}"
        shutil.copytree(self.fold_dir, out / "fold_0")
        self.states.append((what, out))
        return out / "fold_0"

    def commit(self, tmp, path):
        if self.fold_dir.is_dir():
            self._copy(f"killed before {Path(path).name} replaced")
        if Path(path).name == LATEST:
            self.latest_by_epoch[read_training_checkpoint(tmp)[1]["state"]["epoch"]] = sha256(tmp)
        self.real_commit(tmp, path)

    def append(self, path, text):
        self._copy(f"killed before the log line {text.strip()[20:60]!r}")
        torn = self._copy(f"killed in the middle of the log line {text.strip()[20:60]!r}")
        with open(torn / LOG, "a", encoding="utf-8") as handle:
            handle.write(text[: len(text) // 2])
        self.real_append(path, text)


@pytest.fixture(scope="module")
def recorded_run(tiny_data, tmp_path_factory):
    """The uninterrupted run, and the folder of a kill at each of its writes."""
    out = tmp_path_factory.mktemp("straight")
    points = KillPoints(out / "fold_0", tmp_path_factory.mktemp("killed"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(trainer, "update_ema", scripted_ema)
        patch.setattr(src.files, "commit", points.commit)
        patch.setattr(run_state, "append_line", points.append)
        result = train_fold(config(), tiny_data, 0, out)
    # a killed process leaves its temporaries under its own, now dead, process id
    pid = dead_pid()
    for _, state in points.states:
        for leftover in state.glob("fold_0/*.tmp-*"):
            leftover.rename(leftover.with_name(re.sub(r"\.tmp-\d+", f".tmp-{pid}", leftover.name)))
    return result, out / "fold_0", points


def epochs_logged(fold_dir: Path) -> list:
    """(epoch, new best) of the complete epoch lines of the log."""
    text = (fold_dir / LOG).read_text() if (fold_dir / LOG).exists() else ""
    complete = text[: text.rfind("\n") + 1]
    return [(int(m.group(1)), line.endswith("(new best)"))
            for line in complete.splitlines() for m in [_EPOCH_LINE.match(line)] if m]


def checkpoint_epoch(path: Path, latest_by_epoch=None):
    """The epoch a checkpoint file names; it must be byte for byte the latest the recorded run wrote for
    that epoch (``latest_by_epoch``; None for a folder where some epochs were trained again)."""
    if not path.exists():
        return None
    meta = read_training_checkpoint(path)[1]
    epoch = meta["state"]["epoch"]
    if latest_by_epoch is not None:
        assert sha256(path) == latest_by_epoch[epoch], f"{path.name} is not the checkpoint of epoch {epoch}"
    return epoch


def assert_kill_left_a_consistent_folder(fold_dir: Path, latest_by_epoch: dict):
    latest = checkpoint_epoch(fold_dir / LATEST, latest_by_epoch)
    best = checkpoint_epoch(fold_dir / BEST, latest_by_epoch)
    previous = checkpoint_epoch(fold_dir / PREVIOUS, latest_by_epoch)
    logged = epochs_logged(fold_dir)
    assert [epoch for epoch, _ in logged] == list(range(1, len(logged) + 1))
    logged_best = max((epoch for epoch, new_best in logged if new_best), default=None)
    if latest is None:
        assert best is None and previous is None and not logged
        return
    # the log reports every epoch the latest holds, or all but the one just committed
    assert len(logged) in (latest, latest - 1)
    assert previous in (None, latest - 1, latest)
    # the best is the log's best, unless the log has not reported the best's epoch yet
    if best is not None:
        assert best == logged_best or best == len(logged) + 1
    # the best is the one the latest records, unless the latest is a new best whose copy did not land
    if best != BEST_AFTER[latest]:
        assert BEST_AFTER[latest] == latest and (best is None or best < latest)


def assert_resumed_folder_agrees(fold_dir: Path, latest_by_epoch=None):
    latest = checkpoint_epoch(fold_dir / LATEST, latest_by_epoch)
    assert checkpoint_epoch(fold_dir / BEST, latest_by_epoch) == BEST_AFTER[latest]
    logged = epochs_logged(fold_dir)
    assert [epoch for epoch, _ in logged] == list(range(1, latest + 1))
    assert max(epoch for epoch, new_best in logged if new_best) == BEST_AFTER[latest]
    recorded = [line for line in read_training_checkpoint(fold_dir / LATEST)[1]["log"] if _EPOCH_LINE.match(line)]
    assert [line for line in (fold_dir / LOG).read_text().splitlines() if _EPOCH_LINE.match(line)] == recorded
    assert not list(fold_dir.glob("*.tmp-*")), "leftovers of the killed run were not removed"


def weights(path) -> dict:
    params, _ = read_training_checkpoint(path)
    return {name: value.asnumpy() for name, value in params.items()}


def assert_same_weights(path, expected_path):
    expected = weights(expected_path)
    actual = weights(path)
    assert actual.keys() == expected.keys()
    for name, value in expected.items():
        np.testing.assert_allclose(actual[name], value, rtol=1e-5, atol=1e-6, err_msg=name)


def test_every_write_kind_was_a_kill_point(recorded_run):
    _, _, points = recorded_run
    kinds = {what.split(" replaced")[0].split("'")[0] for what, _ in points.states}
    for name in (LATEST, PREVIOUS, BEST, "progress.png", "config.yaml", "plans.json"):
        assert f"killed before {name}" in kinds
    assert "killed in the middle of the log line " in kinds
    assert sorted(points.latest_by_epoch) == [1, 2, 3]


def test_a_kill_at_any_write_leaves_agreement_or_a_repairable_gap(recorded_run, tiny_data, tmp_path, capsys):
    _, _, points = recorded_run
    repaired = 0
    for index, (what, killed) in enumerate(points.states):
        out = tmp_path / f"{index:02d}"
        shutil.copytree(killed, out)  # the recorded states stay as the kill left them, for the other tests
        fold_dir = out / "fold_0"
        assert_kill_left_a_consistent_folder(fold_dir, points.latest_by_epoch)
        if not (fold_dir / LATEST).exists():
            with pytest.raises(UserError, match="no checkpoint to resume from"):
                train_fold(config(), tiny_data, 0, out, resume=True)
            continue
        epoch = checkpoint_epoch(fold_dir / LATEST, points.latest_by_epoch)
        before = {p.name: sha256(p) for p in fold_dir.iterdir()}
        train_fold(config(), tiny_data, 0, out, resume=True, stop_after_epoch=epoch)
        assert_resumed_folder_agrees(fold_dir, points.latest_by_epoch)
        repaired += before.get(BEST) != sha256(fold_dir / BEST) or before.get(LOG) != sha256(fold_dir / LOG)
    # the gaps exist (so the repairs above were exercised): best copies and log lines that did not land
    assert repaired >= 4
    assert "repaired checkpoint_best.ckpt" in capsys.readouterr().out


def test_a_run_killed_while_writing_the_best_resumes_to_the_uninterrupted_weights(recorded_run, tiny_data,
                                                                                  tmp_path, monkeypatch):
    _, straight, points = recorded_run

    class Killed(BaseException):
        pass

    real_commit = src.files.commit
    best_writes = []

    def kill_at_the_second_best(tmp, path):
        if Path(path).name == BEST:
            best_writes.append(path)
            if len(best_writes) == 2:
                raise Killed()
        real_commit(tmp, path)

    monkeypatch.setattr(src.files, "commit", kill_at_the_second_best)
    with pytest.raises(Killed):
        train_fold(config(), tiny_data, 0, tmp_path)
    monkeypatch.setattr(src.files, "commit", real_commit)
    fold_dir = tmp_path / "fold_0"
    # what the old trainer left silently: the log says epoch 3 is not logged yet, the best is still epoch 1
    assert read_training_checkpoint(fold_dir / LATEST)[1]["state"]["best_epoch"] == 3
    assert read_training_checkpoint(fold_dir / BEST)[1]["state"]["epoch"] == 1
    assert [epoch for epoch, _ in epochs_logged(fold_dir)] == [1, 2]

    train_fold(config(), tiny_data, 0, tmp_path, resume=True)
    assert read_training_checkpoint(fold_dir / BEST)[1]["state"]["epoch"] == 3
    assert [epoch for epoch, _ in epochs_logged(fold_dir)] == [1, 2, 3]
    assert_same_weights(fold_dir / BEST, straight / BEST)
    assert_same_weights(fold_dir / LATEST, straight / LATEST)


def _state(points, what_starts):
    matches = [out for what, out in points.states if what.startswith(what_starts)]
    assert matches, what_starts
    return matches


def test_failed_save_keeps_the_previous_checkpoint_then_resume_finishes_exactly(recorded_run, tiny_data,
                                                                               tmp_path, monkeypatch):
    _, straight, points = recorded_run
    # killed in epoch 1 after the latest landed and before its best copy: no best checkpoint at all
    out = tmp_path / "run"
    shutil.copytree(_state(points, f"killed before {BEST}")[0], out)
    assert not (out / "fold_0" / BEST).exists()

    real_commit = src.files.commit

    def disk_full_at_the_next_latest(tmp, path):
        if Path(path).name == LATEST:
            raise OSError(28, "No space left on device")
        real_commit(tmp, path)

    monkeypatch.setattr(src.files, "commit", disk_full_at_the_next_latest)
    with pytest.raises(UserError) as failure:
        train_fold(config(), tiny_data, 0, out, resume=True)
    message = str(failure.value)
    assert "\n" not in message and "No space left on device" in message and "still holds epoch 1" in message
    fold_dir = out / "fold_0"
    assert sha256(fold_dir / LATEST) == points.latest_by_epoch[1]
    assert sha256(fold_dir / BEST) == points.latest_by_epoch[1]      # repaired by the resume
    assert not list(fold_dir.glob("*.tmp-*"))

    monkeypatch.setattr(src.files, "commit", real_commit)
    train_fold(config(), tiny_data, 0, out, resume=True)
    assert_resumed_folder_agrees(fold_dir)
    assert_same_weights(fold_dir / LATEST, straight / LATEST)
    assert_same_weights(fold_dir / BEST, straight / BEST)


def _finished_epoch_2(points) -> Path:
    """The folder after epoch 2 was fully written: latest 2, previous 1, best 1."""
    return _state(points, f"killed before {PREVIOUS}")[-1]


def test_corrupt_latest_falls_back_to_the_previous_checkpoint_with_a_warning(recorded_run, tiny_data, tmp_path,
                                                                            capsys):
    _, _, points = recorded_run
    out = tmp_path / "run"
    shutil.copytree(_finished_epoch_2(points), out)
    fold_dir = out / "fold_0"
    assert read_training_checkpoint(fold_dir / LATEST)[1]["state"]["epoch"] == 2
    (fold_dir / LATEST).write_bytes(b"\x00damaged" * 100)
    train_fold(config(), tiny_data, 0, out, resume=True, stop_after_epoch=1)
    printed = capsys.readouterr().out
    assert "warning:" in printed and "resuming from checkpoint_latest.prev.ckpt (epoch 1)" in printed
    assert sha256(fold_dir / LATEST) == points.latest_by_epoch[1]
    assert_resumed_folder_agrees(fold_dir, points.latest_by_epoch)
    assert "warning:" in (fold_dir / LOG).read_text()


def test_corrupt_latest_resumes_from_a_newer_best(recorded_run, tiny_data, tmp_path, capsys):
    _, straight, points = recorded_run
    out = tmp_path / "run"
    shutil.copytree(straight.parent, out)
    (out / "fold_0" / LATEST).write_bytes(b"\x00damaged" * 100)
    train_fold(config(), tiny_data, 0, out, resume=True)
    assert "resuming from checkpoint_best.ckpt (epoch 3)" in capsys.readouterr().out
    assert sha256(out / "fold_0" / LATEST) == points.latest_by_epoch[3]


def test_no_readable_checkpoint_is_refused(recorded_run, tiny_data, tmp_path):
    _, _, points = recorded_run
    out = tmp_path / "run"
    shutil.copytree(_finished_epoch_2(points), out)
    for name in (LATEST, PREVIOUS, BEST):
        (out / "fold_0" / name).write_bytes(b"\x00damaged")
    with pytest.raises(UserError, match="neither checkpoint_latest.prev.ckpt nor checkpoint_best.ckpt .*--overwrite"):
        train_fold(config(), tiny_data, 0, out, resume=True)


def test_a_best_checkpoint_that_matches_no_record_is_refused(recorded_run, tiny_data, tmp_path):
    _, _, points = recorded_run
    out = tmp_path / "run"
    shutil.copytree(_finished_epoch_2(points), out)
    fold_dir = out / "fold_0"
    # the latest (epoch 2) records epoch 1 as best; a best of epoch 2 is not that, and epoch 1 is gone
    shutil.copy(fold_dir / LATEST, fold_dir / BEST)
    with pytest.raises(UserError, match="records epoch 1 as the best"):
        train_fold(config(), tiny_data, 0, out, resume=True, stop_after_epoch=2)

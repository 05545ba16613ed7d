"""src/files.py: atomic writes keep the old file on failure, stale temporaries go, output checks fire early."""
import os

import pytest

from src import files
from src.errors import UserError
from tests.helpers import Killed, dead_pid


def test_failed_write_keeps_the_previous_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "a.json"
    files.atomic_write_json(path, {"v": 1})

    def half_written(handle):
        handle.write(b"{\"v\": ")
        raise OSError("No space left on device")

    with pytest.raises(OSError):
        files.atomic_write(path, half_written)
    assert files.read_json(path) == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_a_kill_at_the_commit_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "model.ckpt"
    files.atomic_write_bytes(path, b"old")

    def kill(tmp, target):
        raise Killed()

    monkeypatch.setattr(files, "commit", kill)
    with pytest.raises(Killed):
        files.atomic_produce(path, lambda tmp: tmp.write_bytes(b"new"), suffix=".ckpt")
    assert path.read_bytes() == b"old"


def test_atomic_produce_refuses_a_writer_that_wrote_nothing(tmp_path):
    with pytest.raises(RuntimeError, match="produced no file"):
        files.atomic_produce(tmp_path / "x.bin", lambda tmp: None)
    assert not (tmp_path / "x.bin").exists()


def test_atomic_copy(tmp_path):
    (tmp_path / "a").write_bytes(os.urandom(5_000_000))
    files.atomic_copy(tmp_path / "a", tmp_path / "b")
    assert (tmp_path / "a").read_bytes() == (tmp_path / "b").read_bytes()


def test_stale_temporaries_of_dead_processes_are_removed_live_ones_kept(tmp_path):
    gone = dead_pid()
    stale = tmp_path / f"case.nii.gz.tmp-{gone}"
    stale_ckpt = tmp_path / f"checkpoint_latest.ckpt.tmp-{gone}.ckpt"
    mine = tmp_path / f"summary.json.tmp-{os.getpid()}"
    for path in (stale, stale_ckpt, mine, tmp_path / "case.nii.gz"):
        path.write_text("x")
    removed = files.remove_stale_temporaries(tmp_path)
    assert sorted(p.name for p in removed) == sorted([stale.name, stale_ckpt.name])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["case.nii.gz", mine.name])


def test_file_digest_changes_with_the_content(tmp_path):
    path = tmp_path / "m.ckpt"
    path.write_bytes(b"one")
    first = files.file_digest(path)
    assert first.startswith("sha256:") and first == files.file_digest(path)
    path.write_bytes(b"two, longer")
    assert files.file_digest(path) != first
    with pytest.raises(UserError, match="cannot read"):
        files.file_digest(tmp_path / "missing.ckpt")


def test_check_output_dir_refuses_a_file_in_the_way(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is a file, not a folder"):
        files.check_output_dir(tmp_path / "file")
    with pytest.raises(UserError, match="is a file, not a folder"):
        files.check_output_dir(tmp_path / "file" / "below")
    assert files.check_output_dir(tmp_path / "new" / "deep").is_dir()
    assert not list((tmp_path / "new" / "deep").iterdir()), "the write check must not leave a file"


def test_check_output_dir_refuses_an_unwritable_folder(tmp_path, monkeypatch):
    # Tests may run as root, who writes anywhere: fail the real write the check tries instead.
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(files.tempfile, "NamedTemporaryFile", refuse)
    with pytest.raises(UserError, match="not writable: Permission denied"):
        files.check_output_dir(tmp_path)


def test_check_output_file(tmp_path):
    (tmp_path / "folder.csv").mkdir()
    with pytest.raises(UserError, match="is a folder"):
        files.check_output_file(tmp_path / "folder.csv")
    (tmp_path / "plain").write_text("x")
    with pytest.raises(UserError, match="is a file, not a folder"):
        files.check_output_file(tmp_path / "plain" / "m.csv")
    assert files.check_output_file(tmp_path / "sub" / "m.csv") == tmp_path / "sub" / "m.csv"


def test_check_not_input(tmp_path):
    image = tmp_path / "cts" / "patient.nii.gz"
    image.parent.mkdir()
    image.write_text("x")
    files.check_not_input(tmp_path / "out", [image])
    with pytest.raises(UserError, match="is the input"):
        files.check_not_input(image, [image])
    assert files.overlapping_inputs([tmp_path / "cts" / "patient.nii.gz", tmp_path / "cts" / "other.nii.gz"],
                                    [image]) == [image]


def test_atomic_link_survives_the_replacement_of_its_source(tmp_path):
    source, previous = tmp_path / "a.ckpt", tmp_path / "a.prev.ckpt"
    source.write_bytes(b"epoch 1")
    files.atomic_link(source, previous)
    files.atomic_link(source, previous)                    # the same file twice: still one file, no temporary
    files.atomic_write_bytes(source, b"epoch 2")
    assert previous.read_bytes() == b"epoch 1" and source.read_bytes() == b"epoch 2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.ckpt", "a.prev.ckpt"]


def test_atomic_link_copies_where_hard_links_fail(tmp_path, monkeypatch):
    def no_links(*args):
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    source, previous = tmp_path / "a.ckpt", tmp_path / "a.prev.ckpt"
    source.write_bytes(b"epoch 1")
    files.atomic_link(source, previous)
    assert previous.read_bytes() == b"epoch 1" and not previous.samefile(source)


def test_read_json_if_valid_gives_none_for_missing_or_broken_files(tmp_path):
    assert files.read_json_if_valid(tmp_path / "missing.json") is None
    (tmp_path / "broken.json").write_text("{not json")
    assert files.read_json_if_valid(tmp_path / "broken.json") is None
    files.atomic_write_json(tmp_path / "ok.json", {"producer": "export.py"})
    assert files.read_json_if_valid(tmp_path / "ok.json") == {"producer": "export.py"}

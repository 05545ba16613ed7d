"""The one owner of how this project writes and checks files (no MindSpore, no nibabel here).

- Every output is written to ``<name>.tmp-<pid><suffix>`` in its own folder and renamed over the target
  by :func:`commit`, so a reader (or a run killed at any instant) sees the old file or the new one, never a
  half-written one. Tests inject a kill by replacing :func:`commit` (``tests/test_files.py`` and the
  kill-at-every-write tests of each stage).
- Leftovers of killed runs (temporaries whose process is gone) are removed by :func:`remove_stale_temporaries`.
- Derived files (a postprocessing decision, an export sidecar) name the exact model they belong to by
  :func:`file_digest`, and are refused for any other.
- :func:`check_output_dir` / :func:`check_output_file` / :func:`check_not_input` run before any compute,
  so a path typo costs seconds, not an hour of prediction.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Iterable

from src.errors import UserError

_TEMPORARY = re.compile(r"\.tmp-(\d+)")


# ---------------------------------------------------------------- atomic writes

def temporary_path(path, suffix: str = "") -> Path:
    """Where ``path`` is written before :func:`commit` renames it; ``suffix`` for writers that need one."""
    path = Path(path)
    return path.with_name(f"{path.name}.tmp-{os.getpid()}{suffix}")


def commit(tmp, path) -> None:
    """Make the finished temporary ``tmp`` the file ``path`` in one step (the only rename of outputs)."""
    os.replace(tmp, path)


def _discard(tmp: Path) -> None:
    try:
        tmp.unlink()
    except FileNotFoundError:
        pass


def atomic_write(path, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write(file)`` on a temporary in ``path``'s folder, then :func:`commit` it over ``path``.

    On any failure (disk full, an exception in ``write``) ``path`` keeps its previous content.
    """
    path = Path(path)
    tmp = temporary_path(path)
    try:
        with open(tmp, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        commit(tmp, path)
    finally:
        _discard(tmp)


def atomic_produce(path, produce: Callable[[Path], None], suffix: str = "") -> None:
    """Like :func:`atomic_write` for writers that want a file name (``produce(tmp_path)``), e.g. a library
    that appends its own extension: give ``suffix`` so the temporary already ends in it."""
    path = Path(path)
    tmp = temporary_path(path, suffix)
    try:
        produce(tmp)
        if not tmp.is_file():
            raise RuntimeError(f"writing {path} produced no file")
        commit(tmp, path)
    finally:
        _discard(tmp)


def atomic_copy(source, target) -> None:
    """Copy ``source`` over ``target`` atomically."""
    source = Path(source)

    def copy(handle):
        with open(source, "rb") as src:
            while True:
                chunk = src.read(1 << 22)
                if not chunk:
                    break
                handle.write(chunk)

    atomic_write(target, copy)


def atomic_link(source, target) -> None:
    """Make ``target`` the same file as ``source`` in one step: a hard link (no copy) committed over it, or
    the bytes copied where the file system has no hard links. ``target`` is never half-written."""
    source, target = Path(source), Path(target)
    tmp = temporary_path(target)
    try:
        os.link(source, tmp)
    except OSError:
        _discard(tmp)
        atomic_copy(source, target)
        return
    try:
        commit(tmp, target)
    finally:
        _discard(tmp)


def atomic_write_bytes(path, data: bytes) -> None:
    atomic_write(path, lambda handle: handle.write(data))


def atomic_write_text(path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def read_json(path, what: str = "file", hint: str = ""):
    """A JSON file's content; a missing or malformed file is one UserError naming it (and ``hint``)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} not found: {path}{hint}")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"{what} {path} is not valid JSON: {err}") from None


def read_json_if_valid(path):
    """A JSON file's content, or None when it is missing or not JSON: for files that may be someone else's
    (an export's sidecar, a report, a case file), which callers then check for their own marks."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------- leftovers of killed runs

def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_temporaries(folder, recursive: bool = False) -> list[Path]:
    """Delete ``*.tmp-<pid>*`` files in ``folder`` whose writing process no longer runs; returns them."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    entries = folder.rglob("*") if recursive else folder.iterdir()
    for entry in entries:
        match = _TEMPORARY.search(entry.name)
        if match and entry.is_file() and not _process_alive(int(match.group(1))):
            _discard(entry)
            removed.append(entry)
    return removed


# ---------------------------------------------------------------- identity of a model file

_DIGESTS: dict = {}


def file_digest(path) -> str:
    """``sha256:<hex>`` of a file's bytes (cached per path, inode, size and modification time: every atomic
    write makes a new inode, so a file replaced within one clock tick is still read again)."""
    path = Path(path)
    try:
        stat = path.stat()
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror or err}") from None
    key = (str(path.resolve()), stat.st_ino, stat.st_size, stat.st_mtime_ns)
    if key not in _DIGESTS:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 22), b""):
                digest.update(chunk)
        _DIGESTS[key] = "sha256:" + digest.hexdigest()
    return _DIGESTS[key]


# ---------------------------------------------------------------- checking outputs before the work

def _first_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_output_dir(path, what: str = "output folder", create: bool = True) -> Path:
    """Fail now, with one line, if ``path`` cannot become a writable folder; create it when ``create``.

    Refuses a path under an existing file and a folder the process cannot write to.
    """
    path = Path(path)
    existing = _first_existing(path.absolute())
    if not existing.is_dir():
        raise UserError(f"{what} {path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{what} {path}: {existing} is not writable")
    if create:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UserError(f"cannot create {what} {path}: {err.strerror or err}") from None
        try:  # access() can be fooled (read-only mounts, ACLs): try a real file
            with tempfile.NamedTemporaryFile(dir=path, prefix=".write-check-"):
                pass
        except OSError as err:
            raise UserError(f"{what} {path} is not writable: {err.strerror or err}") from None
    return path


def check_output_file(path, what: str = "output file") -> Path:
    """Fail now if ``path`` cannot be written: a folder in its place, or a folder above it that is a file or
    read-only. Creates the missing parent folders."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{what} {path} is a folder")
    check_output_dir(path.parent if str(path.parent) else Path("."), what=f"folder of {what} {path}")
    return path


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.relative_to(folder)
        return True
    except ValueError:
        return False


def check_not_input(output, inputs: Iterable, what: str = "output") -> None:
    """Refuse an output path that is one of the input files or the folder holding one of them with the
    same name, so no output can replace an input. ``output`` is a folder; ``inputs`` are file paths."""
    out = Path(output).resolve()
    for source in inputs:
        source = Path(source).resolve()
        if source == out or _inside(out, source):
            raise UserError(f"{what} {output} is the input {source}; choose another output")


def _identity(path: Path):
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def overlapping_inputs(targets: Iterable, inputs: Iterable) -> list[Path]:
    """The input files some of ``targets`` (files about to be written) would replace: the same path after
    resolving links, or an existing hard link to an input."""
    inputs = [Path(p) for p in inputs]
    sources = {p.resolve() for p in inputs}
    source_files = {identity for identity in map(_identity, inputs) if identity is not None}
    return [Path(t) for t in targets
            if Path(t).resolve() in sources or (source_files and _identity(Path(t)) in source_files)]

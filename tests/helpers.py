"""Helpers several test modules share (fixtures are in tests/conftest.py): entry scripts loaded as modules,
folder snapshots, kills injected at a write, a pid no process has, a free port, MindSpore's execution mode
kept."""
import contextlib
import hashlib
import importlib.util
import socket
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_script(name: str):
    """A top-level entry script (``predict``, ``eval.py``, ``ascend310_infer/mindir_runner.py``) as a module,
    so a test calls its ``main(argv)`` in-process instead of paying for a new interpreter and MindSpore."""
    path = ROOT / (name if name.endswith(".py") else f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"entry_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def snapshot(folder: Path) -> dict:
    """Every file below ``folder`` (relative path) -> sha256 of its content: equal snapshots mean nothing
    was written, replaced or removed."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}


class Killed(BaseException):
    """A kill at a write: not an Exception, so no handler of the code under test swallows it."""


@contextlib.contextmanager
def killed_at_commit(kill_at: int):
    """Inside the block, the ``kill_at``-th call of ``src.files.commit`` (the one rename every output goes
    through) raises Killed instead of renaming (0: none does); yields the list of the paths commit was
    called for, in order. The real commit is back after the block whatever happened."""
    import src.files

    real_commit = src.files.commit
    attempted = []

    def commit(tmp, path):
        attempted.append(Path(path))
        if len(attempted) == kill_at:
            raise Killed(str(path))
        real_commit(tmp, path)

    src.files.commit = commit
    try:
        yield attempted
    finally:
        src.files.commit = real_commit


def dead_pid() -> int:
    """The pid of a process that has exited, as a killed run's temporaries carry."""
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def free_port() -> int:
    """A TCP port nothing listens on now (msrun's master port in the multi-process tests)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def execution_mode_kept(mode=None):
    """MindSpore's execution mode put back on exit (training, export and load_predictor switch to graph
    mode; later tests expect what they found), optionally set to ``mode`` inside."""
    import mindspore as ms

    previous = ms.get_context("mode")
    if mode is not None:
        ms.set_context(mode=mode)
    try:
        yield
    finally:
        ms.set_context(mode=previous)

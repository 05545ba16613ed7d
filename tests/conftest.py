"""Shared test set-up: the repository root on sys.path, the CPU fast path applied before MindSpore, and the
fixtures several test folders use (helpers that are no fixtures: tests/helpers.py)."""
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import src  # noqa: E402,F401  (sets the oneDNN ISA before any test imports mindspore)
from tests.helpers import execution_mode_kept  # noqa: E402


@pytest.fixture
def restore_mode():
    """load_predictor, export and training switch to graph mode; put back whatever the other tests expect."""
    with execution_mode_kept():
        yield


@pytest.fixture
def graph_mode():
    """Graph mode for one test (what the trainer and exported networks run in), then the mode found."""
    import mindspore as ms

    with execution_mode_kept(ms.GRAPH_MODE):
        yield


@pytest.fixture
def preprocessed_dir(tmp_path) -> Path:
    """A tiny preprocessed folder (plans.json, splits.json, cases) of tests/data/preprocessed_fixture.py."""
    from tests.data.preprocessed_fixture import make_preprocessed_folder

    folder = tmp_path / "preprocessed"
    make_preprocessed_folder(folder)
    return folder

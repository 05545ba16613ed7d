"""Fixtures of the training tests: the execution mode restored after each module, and one tiny
preprocessed folder per module."""
import pytest

from tests.data.preprocessed_fixture import make_preprocessed_folder
from tests.helpers import execution_mode_kept
from tests.train.tiny_training import TINY_STRIDES


@pytest.fixture(autouse=True, scope="module")
def restore_execution_mode():
    # train_fold switches to graph mode; later test modules expect the default
    with execution_mode_kept():
        yield


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pre")
    make_preprocessed_folder(folder, patch_size=(16, 16, 16), strides=TINY_STRIDES)
    return folder

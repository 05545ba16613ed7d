"""src/data/preprocessed_case.py: a preprocessed case read back, memory-mapped where np.savez stored it plainly."""
import numpy as np
import pytest

from src.data.preprocessed_case import load_case
from src.errors import UserError
from tests.data.preprocessed_fixture import synthetic_case, write_preprocessed_case


@pytest.mark.parametrize("compressed", [False, True])
def test_load_case_reads_arrays_and_foreground(tmp_path, compressed):
    data, seg = synthetic_case((12, 14, 16), seed=3)
    write_preprocessed_case(tmp_path, "case_a", data, seg, compressed=compressed)
    case = load_case(tmp_path, "case_a")
    np.testing.assert_array_equal(case.data, data)
    np.testing.assert_array_equal(case.seg, seg)
    assert case.shape == (12, 14, 16) and sorted(case.fg_locations) == [1, 2]
    np.testing.assert_array_equal(case.fg_locations[1], np.argwhere(seg == 1))
    # np.savez stores members uncompressed: they are mapped from the file, not read into memory
    assert isinstance(case.data.base, np.memmap) != compressed


def test_load_case_reports_user_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_case(tmp_path, "missing")
    (tmp_path / "broken.npz").write_bytes(b"not a zip file")
    with pytest.raises(UserError, match="broken.npz"):
        load_case(tmp_path, "broken")
    np.savez(tmp_path / "mismatch.npz", data=np.zeros((1, 4, 4, 4), np.float32), seg=np.zeros((4, 4, 5), np.int8))
    with pytest.raises(UserError, match="mismatch.npz"):
        load_case(tmp_path, "mismatch")
    np.savez(tmp_path / "noseg.npz", data=np.zeros((1, 4, 4, 4), np.float32))
    with pytest.raises(UserError, match="lacks"):
        load_case(tmp_path, "noseg")

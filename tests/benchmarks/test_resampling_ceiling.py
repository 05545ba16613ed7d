import pytest

from benchmarks.resampling_ceiling import ceilings, main
from tests.data.test_io import write_kits_case


@pytest.fixture
def raw(tmp_path):
    for i in range(2):
        write_kits_case(tmp_path / "raw", f"case_{i:05d}", seed=i, spacing=(3.0, 0.8, 0.8))
    return tmp_path / "raw"


def test_native_spacing_loses_nothing_and_coarser_spacing_loses_some(raw):
    results = ceilings(raw, [[3.0, 0.8, 0.8], [3.0, 2.0, 2.0]])
    native, coarse = results["3x0.8x0.8"], results["3x2x2"]
    assert native["cases"] == 2
    assert native["kidney_min"] == pytest.approx(1.0) and native["tumor_min"] == pytest.approx(1.0)
    assert 0.3 < coarse["kidney_mean"] < 0.999 and coarse["tumor_mean"] < 0.999


def test_folder_without_labels_is_one_user_error(tmp_path, capsys):
    write_kits_case(tmp_path / "raw", "case_00000", with_label=False)
    with pytest.raises(SystemExit) as exit_info:
        main(["--raw", str(tmp_path / "raw"), "--target_spacing", "3", "2", "2"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith("error: no labelled cases")

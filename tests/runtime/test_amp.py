from src.runtime.amp import resolve_amp_level


def test_resolve_amp_level():
    assert resolve_amp_level("auto", "Ascend") == "O2"
    assert resolve_amp_level("auto", "CPU") == "O0"
    assert resolve_amp_level("O2", "CPU") == "O2"

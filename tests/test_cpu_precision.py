"""bf16 selection (src/cpu_precision.py) with faked CPU flags: bf16 only where AVX512-BF16 or AMX exist."""
import pytest

from src import cpu_precision
from src.cpu_precision import FPMATH_ENV, apply_precision, bf16_capable, choose_precision, cpu_flags

AVX2_ONLY = {"sse4_2", "avx", "avx2", "fma"}
AVX512_BF16 = AVX2_ONLY | {"avx512f", "avx512_bf16"}
AMX = AVX2_ONLY | {"avx512f", "amx_tile", "amx_bf16"}


def test_flags_are_read_from_cpuinfo_text():
    text = "processor\t: 0\nflags\t\t: fpu avx2 avx512_bf16\n\nprocessor\t: 1\nflags\t\t: fpu\n"
    assert cpu_flags(text) == {"fpu", "avx2", "avx512_bf16"}
    assert cpu_flags("no flags here") == set()


@pytest.mark.parametrize("flags, setting, expected", [
    (AVX2_ONLY, "auto", "fp32"), (AVX2_ONLY, "bf16", "fp32"), (AVX2_ONLY, "fp32", "fp32"),
    (AVX512_BF16, "auto", "bf16"), (AVX512_BF16, "bf16", "bf16"), (AVX512_BF16, "fp32", "fp32"),
    (AMX, "auto", "bf16"), ({"avx512f"}, "auto", "fp32"),
])
def test_bf16_is_chosen_only_on_cpus_that_have_it(flags, setting, expected):
    assert choose_precision(setting, flags) == expected
    assert bf16_capable(flags) == (bool(flags & {"avx512_bf16", "amx_bf16"}))


def test_apply_sets_onednn_math_mode_only_for_bf16_and_undoes_its_own(monkeypatch):
    monkeypatch.delenv(FPMATH_ENV, raising=False)
    monkeypatch.delenv("KITSEG_FPMATH_SET", raising=False)
    assert apply_precision("auto", AVX2_ONLY) == "fp32" and FPMATH_ENV not in cpu_precision.os.environ
    assert apply_precision("auto", AMX) == "bf16" and cpu_precision.os.environ[FPMATH_ENV] == "BF16"
    assert apply_precision("fp32", AMX) == "fp32" and FPMATH_ENV not in cpu_precision.os.environ


def test_a_users_math_mode_is_kept(monkeypatch):
    monkeypatch.setenv(FPMATH_ENV, "STRICT")
    monkeypatch.delenv("KITSEG_FPMATH_SET", raising=False)
    assert apply_precision("auto", AMX) == "fp32"
    assert cpu_precision.os.environ[FPMATH_ENV] == "STRICT"


def test_unknown_setting_is_refused():
    with pytest.raises(ValueError):
        choose_precision("fp16", AMX)

"""Process-wide start-up settings."""

from __future__ import annotations

import pytest

from rlhf import runtime

AMD = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx fma avx2\n\nprocessor\t: 1\n"
INTEL = "processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu sse2 avx fma avx2 avx512f\n"
OLD_AMD = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx\n"


@pytest.mark.parametrize(
    ("cpuinfo", "already", "expected"),
    [
        (AMD, None, "AVX2"),  # MKL's AVX2 kernels on an AMD CPU that has AVX2
        (INTEL, None, None),  # Intel keeps MKL's own choice
        (OLD_AMD, None, None),  # no AVX2: nothing to force
        (AMD, "COMPATIBLE", "COMPATIBLE"),  # the user's own setting wins
    ],
)
def test_tune_blas_picks_mkls_avx2_kernels_only_on_amd(cpuinfo, already, expected, tmp_path, monkeypatch):
    monkeypatch.setattr(runtime.sys, "platform", "linux")
    monkeypatch.setenv("MKL_CBWR", already or "")  # restored after the test, whatever it sets
    if already is None:
        monkeypatch.delenv("MKL_CBWR")
    (tmp_path / "cpuinfo").write_text(cpuinfo)
    runtime.tune_blas(tmp_path / "cpuinfo")
    assert runtime.os.environ.get("MKL_CBWR") == expected

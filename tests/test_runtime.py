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


@pytest.mark.skipif(not runtime.Path("/proc/self/clear_refs").exists(), reason="Linux: /proc/self/clear_refs")
def test_stage_peaks_tell_a_stages_peak_from_an_earlier_ones():
    import numpy as np

    peaks = runtime.StagePeaks()
    peaks.start()
    big = np.ones(300 * 2**20 // 8)  # 300 MB, touched, then freed before the stage ends
    del big
    runtime.release_memory()
    first = peaks.end("big")
    small = np.ones(20 * 2**20 // 8)
    second = peaks.end("small")
    del small
    assert first - second > 200, peaks.peaks  # the second stage's peak is not the first one's
    assert peaks.peaks == {"big": round(first, 1), "small": round(second, 1)}
    assert peaks.peak_mb() >= round(first, 1)  # the run's peak still counts the first stage


@pytest.mark.parametrize(("already", "expected"), [(None, runtime.ONEDNN_CACHE), ("512", "512")])
def test_run_processes_bound_onednns_primitive_cache_unless_the_user_set_it(already, expected):
    """Read by oneDNN when it first runs: a run's process (and every process it launches) starts with it."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "ONEDNN_PRIMITIVE_CACHE_CAPACITY"}
    if already:
        env["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] = already
    code = (
        "from rlhf import runtime; runtime.startup(); import os, subprocess, sys; "
        "print(subprocess.run([sys.executable, '-c', "
        "'import os; print(os.environ[\"ONEDNN_PRIMITIVE_CACHE_CAPACITY\"])'], "
        "capture_output=True, text=True).stdout.strip())"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == expected

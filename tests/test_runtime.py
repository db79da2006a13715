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


# a command line through rlhf.cli: which allocator it ran on, its process id and its arguments
PROBE = (
    "import os, sys\n"
    "from rlhf import cli, runtime\n"
    "cli.run(lambda argv: print(runtime.malloc(), os.getpid(), ' '.join(argv)))"
)
FOUND = {name: runtime.find_allocator(name) for name in runtime.ALLOCATORS}
AUTO = next(
    (name for name, path in FOUND.items() if path), "glibc"
)  # tcmalloc, then jemalloc, as torch's launcher


def needs(name: str):
    return pytest.mark.skipif(
        FOUND[name] is None, reason=f"no {name} on this machine (Debian: libtcmalloc-minimal4, libjemalloc2)"
    )


def command_malloc(env: dict[str, str], *args: str) -> tuple[str, int, str, int]:
    """A command line started with `env`: the allocator it ran on, its process id and arguments as it saw
    them, and the id of the process that was started."""
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-c", PROBE, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    name, pid, seen = (out.split(maxsplit=2) + [""])[:3]
    return name, int(pid), seen.strip(), proc.pid


@pytest.mark.skipif(not runtime.sys.platform.startswith("linux"), reason="LD_PRELOAD: Linux")
@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, AUTO),
        ({"RLHF_MALLOC": "glibc"}, "glibc"),
        pytest.param({"RLHF_MALLOC": "tcmalloc"}, "tcmalloc", marks=needs("tcmalloc")),
        pytest.param({"RLHF_MALLOC": "jemalloc"}, "jemalloc", marks=needs("jemalloc")),
        ({"MALLOC_MMAP_THRESHOLD_": "131072"}, "glibc"),  # glibc's own thresholds asked for: glibc's malloc
    ],
)
def test_a_command_runs_again_in_the_same_process_on_the_allocator_chosen(env, expected):
    """The allocator is read from the libraries the process mapped (/proc/self/maps), not from LD_PRELOAD."""
    import os

    base = {k: v for k, v in os.environ.items() if k not in ("RLHF_MALLOC", "LD_PRELOAD", "MALLOC_CONF")}
    name, pid, seen, started = command_malloc({**base, **env}, "method=dpo", "a b")
    assert name == expected
    assert pid == started  # executed itself again: a signal to the process it started still reaches it
    assert seen == "method=dpo a b"  # its arguments as given


def test_a_library_the_loader_cannot_preload_leaves_the_command_on_glibc(tmp_path):
    """An allocator found but not loadable (here: an empty file where conda's would be): the loader ignores
    the preload, and the command goes on once on glibc instead of running itself again for ever."""
    import os

    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "libtcmalloc_minimal.so.4").write_bytes(b"")
    base = {k: v for k, v in os.environ.items() if k not in ("RLHF_MALLOC", "LD_PRELOAD", "MALLOC_CONF")}
    name, pid, seen, started = command_malloc({**base, "CONDA_PREFIX": str(tmp_path)}, "x")
    assert (name, pid, seen) == ("glibc", started, "x")


@needs("tcmalloc")
def test_what_a_stage_freed_goes_back_to_the_os_on_tcmalloc_too():
    """release_memory between stages: tcmalloc keeps freed pages, as tuned glibc does, until asked."""
    import subprocess
    import sys

    code = (
        "import numpy as np\n"
        "from rlhf import runtime\n"
        "def rss():\n"
        "    return int(open('/proc/self/statm').read().split()[1]) * 4096 / 2**20\n"
        "big = np.ones(300 * 2**20 // 8); del big\n"
        "kept = rss(); runtime.release_memory(); print(runtime.malloc(), kept, rss())"
    )
    env = {"LD_PRELOAD": FOUND["tcmalloc"], "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    name, kept, after = out.stdout.split()
    assert name == "tcmalloc"
    assert float(kept) - float(after) > 200, out.stdout  # the freed 300 MB was held, then handed back


def test_an_unknown_allocator_is_one_line_and_exit_2(run_rlhf):
    out = run_rlhf("--help", env={"RLHF_MALLOC": "tcmaloc"})
    assert out.returncode == 2
    assert out.stderr.strip() == (
        "error: RLHF_MALLOC=tcmaloc: no such allocator; fix: one of auto, tcmalloc, jemalloc, glibc"
    )


def test_a_library_left_out_is_one_that_transformers_peft_and_accelerate_do_without():
    """leave_out before transformers is imported: the libraries' own checks find it missing, peft and the
    Trainer import without it, and an import of it fails as for a package not installed. Once transformers
    is imported, nothing more is left out (every library must see one answer)."""
    import importlib.util
    import subprocess
    import sys

    assert importlib.util.find_spec("bitsandbytes") and importlib.util.find_spec("deepspeed")  # installed
    code = (
        "from rlhf import runtime\n"
        "out = runtime.leave_out(['bitsandbytes', 'deepspeed', 'no_such_library'])\n"
        "import peft.helpers\n"
        "from transformers import Trainer\n"
        "from transformers.utils import is_bitsandbytes_available\n"
        "from accelerate.utils import is_bnb_available, is_deepspeed_available\n"
        "try:\n"
        "    import bitsandbytes\n"
        "except ModuleNotFoundError:\n"
        "    missing = True\n"
        "found = [bool(f()) for f in (is_bitsandbytes_available, is_bnb_available, is_deepspeed_available)]\n"
        "print(out, *found,\n"
        "      peft.helpers.bnb, missing, runtime.leave_out(['wandb']))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split("\n")[-2] == "['bitsandbytes', 'deepspeed'] False False False None True []"

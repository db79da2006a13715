"""Shared fixtures: the real config composed with overrides, the tiny model, and `python -m rlhf` runs.

Nothing here needs the network; the tiny model is built once per session into a temporary cache.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from rlhf import config, runtime

# MKL's AVX2 branch, which rlhf picks on AMD CPUs for real models' matmuls (rlhf.runtime.tune_blas), takes
# ~300x longer on the tiny test model's 64-wide ones (5.3 ms vs 17 us for 256x64 @ 64x64, on a 2-core AMD
# EPYC): the tests, whose results do not depend on MKL's code path, keep MKL's own choice. Set before the
# first matmul; subprocesses inherit it.
os.environ.setdefault("MKL_CBWR", "AUTO")
# `make test` runs the suite in one process per core, up to 4 (pytest-xdist): each computes on one thread, and
# so do the runs it starts, or they would contend for the same cores.
if "PYTEST_XDIST_WORKER" in os.environ:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
runtime.startup()  # as every entrypoint does otherwise: malloc tuning, quiet libraries

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("rlhf-cache")


@pytest.fixture(scope="session")
def make_cfg(cache_dir):
    """make_cfg(*overrides) -> the composed root config, exactly as `python -m rlhf` would see it."""
    config.register()

    def make(*overrides: str):
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return compose(config_name="config", overrides=[f"cache_dir={cache_dir}", *overrides])

    return make


@pytest.fixture(scope="session")
def tiny(make_cfg):
    """(model, tokenizer) factory for the tiny Llama on the cpu profile: a fresh model each call."""
    from rlhf import hardware, methods, models

    def load(*overrides: str):  # the dtype the run would load it in: its method may train every weight
        cfg = make_cfg("model=tiny", "hardware=cpu", *overrides)
        hw = hardware.resolve(cfg.hardware, methods.frozen_base(cfg.method))
        return models.load(cfg.model, hw, cfg.cache_dir)

    return load


@contextlib.contextmanager
def environment(values: dict[str, str], drop: tuple[str, ...] = ()):
    """os.environ with these values set and keys starting with `drop` removed, restored afterwards."""
    saved = dict(os.environ)
    for key in [k for k in os.environ if k.startswith(drop)] if drop else []:
        del os.environ[key]
    os.environ.update(values)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def reset_accelerate() -> None:
    """Clear accelerate's process-wide state, as a new process starts without it (a trainer's Accelerator
    fixes the mixed precision of every later one in the process)."""
    if "accelerate" in sys.modules:
        from accelerate.state import AcceleratorState, GradientState, PartialState

        AcceleratorState._reset_state(True)
        GradientState._reset_state()
        PartialState._reset_state()


@pytest.fixture(autouse=True)
def fresh_accelerate():
    """Every test starts as a new process would, whichever tests ran before it in this one."""
    reset_accelerate()


def in_process(main, argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run an entrypoint's main in this process as its command would run: the same argv, environment,
    stdout, stderr and exit status (SystemExit), without a new interpreter importing torch and TRL again."""
    from hydra.core.global_hydra import GlobalHydra

    out, err = io.StringIO(), io.StringIO()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    code = 0
    GlobalHydra.instance().clear()
    reset_accelerate()
    with environment(env, drop=("WANDB_", "HYDRA_FULL_ERROR")), redirect_stdout(out), redirect_stderr(err):
        try:
            main(argv)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        finally:
            GlobalHydra.instance().clear()
            root.handlers[:], root.level = handlers, level  # Hydra's job logging points into the run dir
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="session")
def rlhf_cli(cache_dir):
    """rlhf_cli(*args) -> CompletedProcess of `python -m rlhf args...`, run in this process (the real Hydra
    app: compose, validate, train, report), with the session's model cache and no wandb key."""
    from rlhf import __main__ as app
    from rlhf import cli

    def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        full_env = {"RLHF_CACHE_DIR": str(cache_dir), "NETRC": str(cache_dir / "no-netrc"), **(env or {})}
        return in_process(lambda argv: cli.run(app.start, argv), list(args), full_env)

    return run


@pytest.fixture(scope="session")
def run_rlhf(cache_dir):
    """run_rlhf(*args) -> CompletedProcess of `python -m rlhf args...` in a new process, for tests whose point
    is the process (its exit status as a shell sees it, a console script, several processes)."""

    def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "rlhf", *args],
            capture_output=True,
            text=True,
            env=process_env(cache_dir, env),
            cwd=ROOT,
            timeout=600,
        )

    return run


@pytest.fixture(scope="session")
def start_rlhf(cache_dir):
    """start_rlhf(*args) -> Popen of `python -m rlhf args...` in a session of its own (its own process group,
    as a shell gives a command), for tests that signal it part-way; `output=subprocess.DEVNULL` for a process
    whose output is not read."""

    def start(*args: str, output: int = subprocess.PIPE) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "rlhf", *args],
            stdout=output,
            stderr=output,
            text=True,
            env=process_env(cache_dir),
            cwd=ROOT,
            start_new_session=True,
        )

    return start


def process_env(cache_dir: Path, env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a `python -m rlhf` process: the test cache, no wandb key or mode from the
    developer's machine (runs stay offline: logger=wandb is the default), Hydra's short errors."""
    base = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR" and not k.startswith("WANDB_")}
    return {**base, "RLHF_CACHE_DIR": str(cache_dir), "NETRC": str(cache_dir / "no-netrc"), **(env or {})}


def positions_through(layer) -> list[int]:
    """Each forward's number of positions (rows x sequence) through `layer`, recorded by a forward hook."""
    seen: list[int] = []
    layer.register_forward_hook(lambda module, args, out: seen.append(args[0].shape[:2].numel()))
    return seen


@contextlib.contextmanager
def largest_tensor(floating_only: bool = False):
    """Counts the elements of the largest tensor any torch op creates inside the block: `.numel` of what
    it yields."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    class Largest(TorchDispatchMode):
        numel = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor) and (t.is_floating_point() or not floating_only):
                    self.numel = max(self.numel, t.numel())
            return out

    with Largest() as seen:
        yield seen


@contextlib.contextmanager
def sdpa_calls():
    """Records every call of torch's scaled_dot_product_attention inside the block: the list it yields gets
    one entry per call, True where gradients were on."""
    import torch

    calls: list[bool] = []
    original = torch.nn.functional.scaled_dot_product_attention

    def recorded(*args, **kwargs):
        calls.append(torch.is_grad_enabled())
        return original(*args, **kwargs)

    torch.nn.functional.scaled_dot_product_attention = recorded
    try:
        yield calls
    finally:
        torch.nn.functional.scaled_dot_product_attention = original


class Rows:
    """A metrics sink that keeps the rows in memory (what rlhf.metrics.MetricsFile also writes to a file)."""

    def __init__(self):
        self.rows: list[dict] = []

    def write(self, step: int, epoch: float, values: dict) -> None:
        self.rows.append({"step": step, "epoch": epoch, **values})


def make_inputs(cfg, model, tokenizer, rows, run_dir: Path, metrics=None, **extra):
    """The typed inputs the training stage hands a method, for in-process method tests (hardware=cpu)."""
    from omegaconf import OmegaConf

    from rlhf import hardware
    from rlhf.methods import Inputs, RunInfo

    return Inputs(
        model=model,
        tokenizer=tokenizer,
        rows=rows,
        config=OmegaConf.to_object(cfg.method),
        hardware=hardware.resolve(cfg.hardware),
        run=RunInfo(dir=Path(run_dir), seed=cfg.seed),
        metrics=metrics if metrics is not None else Rows(),
        **extra,
    )

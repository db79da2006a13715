"""Shared fixtures: the real config composed with overrides, the tiny model, and `python -m rlhf` runs.

Nothing here needs the network; the tiny model is built once per session into a temporary cache.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from rlhf import runtime
from rlhf.config import register_schemas

runtime.tune_malloc()  # as the entrypoint does: in-process training tests run faster
runtime.tune_blas()
runtime.quiet_libraries()

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("rlhf-cache")


@pytest.fixture(scope="session")
def make_cfg(cache_dir):
    """make_cfg(*overrides) -> the composed root config, exactly as `python -m rlhf` would see it."""
    register_schemas()

    def make(*overrides: str):
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return compose(config_name="config", overrides=[f"cache_dir={cache_dir}", *overrides])

    return make


@pytest.fixture(scope="session")
def tiny(make_cfg):
    """(model, tokenizer) factory for the tiny Llama on the cpu profile: a fresh model each call."""
    from rlhf import models

    def load(*overrides: str):
        cfg = make_cfg("model=tiny", "hardware=cpu", *overrides)
        return models.load(cfg.model, cfg.hardware, cfg.cache_dir)

    return load


@pytest.fixture(scope="session")
def run_rlhf(cache_dir):
    """run_rlhf(*args) -> CompletedProcess of `python -m rlhf args...` with the session's model cache."""

    def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        # no wandb key or mode from the developer's machine: runs stay offline (logger=wandb is the default)
        base = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR" and not k.startswith("WANDB_")}
        full_env = {
            **base,
            "RLHF_CACHE_DIR": str(cache_dir),
            "NETRC": str(cache_dir / "no-netrc"),
            **(env or {}),
        }
        return subprocess.run(
            [sys.executable, "-m", "rlhf", *args],
            capture_output=True,
            text=True,
            env=full_env,
            cwd=ROOT,
            timeout=600,
        )

    return run


def trainer_args(cfg, run_dir: Path, **extra) -> dict:
    """The arguments the entrypoint hands a method, for in-process method tests."""
    from rlhf import hardware, report

    return {
        **hardware.trainer_args(cfg.hardware),
        **report.trainer_io(run_dir, cfg.seed),
        "disable_tqdm": True,
        **extra,
    }

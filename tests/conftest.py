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

from rlhf import config, runtime

runtime.startup()  # as every entrypoint does: in-process training tests run faster

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
    from rlhf import hardware, models

    def load(*overrides: str):
        cfg = make_cfg("model=tiny", "hardware=cpu", *overrides)
        return models.load(cfg.model, hardware.resolve(cfg.hardware), cfg.cache_dir)

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

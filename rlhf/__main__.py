"""`python -m rlhf [overrides]`: compose the config, then train (rlhf/train.py). See conf/config.yaml."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from rlhf import cli as entry
from rlhf import config, distributed, resume, sweep
from rlhf.errors import HYDRA_START_FILES, UserError, install_hydra_reporter
from rlhf.validate import validate

ALONE = False  # set by the command (cli): this process exists for the run it starts


@hydra.main(version_base="1.3", config_path=str(config.CONF), config_name="config")
@sweep.keep_going  # in a multirun, a crashed job leaves failed.json and the sweep goes on
def main(cfg: DictConfig) -> float | None:
    hc = HydraConfig.get()
    if cfg.distributed.engine != "none" and not distributed.inside_launch():
        # a sweep's job (-m) with a distributed preset: it launches its own processes in its directory
        validate(cfg)
        return distributed.launch_job(cfg, list(hc.overrides.task), Path(hc.runtime.output_dir))
    from hydra.types import RunMode

    from rlhf import train

    # one run in a process of its own (not a sweep's jobs, nor a caller's process, which may run others that
    # need what this one's settings leave out)
    return train.run(cfg, Path(hc.runtime.output_dir), whole_process=ALONE and hc.mode == RunMode.RUN)


def check_run_dir(argv: list[str]) -> None:
    """Refuse a hydra.run.dir that already holds files, and a multi-process launch without one.

    Hydra's own start-up files do not count: under `accelerate launch` another rank may have written them;
    nor do the accelerate / DeepSpeed files that distributed=<preset> writes there before it launches.
    """
    given = [a.split("=", 1)[1] for a in argv if a.startswith("hydra.run.dir=")]
    if (
        given
        and Path(given[-1]).is_dir()
        and any(
            p.name not in HYDRA_START_FILES and not distributed.is_launch_file(p.name)
            for p in Path(given[-1]).iterdir()
        )
    ):
        raise UserError(f"hydra.run.dir={given[-1]}: already holds files; fix: choose a new directory")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not given:
        raise UserError(
            "hydra.run.dir: under a multi-process launch each process computes its own timestamped "
            "directory; fix: pass hydra.run.dir=outputs/<name> explicitly"
        )


def start(argv: list[str]) -> None:
    install_hydra_reporter()  # errors inside the Hydra app: one line each, as here
    config.register()
    if any(a.startswith("resume=") and a != "resume=" for a in argv):
        argv = resume.argv_for(argv)  # the run's own overrides and its directory, which holds files
        if argv is None:  # finished: nothing to do
            return
    else:
        check_run_dir(argv)
    cfg = distributed.composed_for_launch(argv)  # distributed=<preset>, not yet inside a launch
    if cfg is not None:
        validate(cfg)  # every config problem once, before any process starts
        sys.exit(distributed.launch(cfg, argv, distributed.run_dir_of(cfg)))
    sys.argv = [sys.argv[0], *argv]
    main()


def cli() -> None:
    """The console script `rlhf` (= python -m rlhf)."""
    global ALONE
    ALONE = True
    entry.run(start)


if __name__ == "__main__":
    cli()

"""`python -m rlhf.synth [synth=magpie|self-instruct|preferences] [overrides]`: generate a data set (the run
is rlhf/synth/__init__.py; the config conf/synthesize.yaml). `resume=<run dir>` continues one."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from rlhf import cli, config
from rlhf.errors import install_hydra_reporter


@hydra.main(version_base="1.3", config_path=str(config.CONF), config_name="synthesize")
def main(cfg: DictConfig) -> None:
    from rlhf import synth

    synth.run(cfg, Path(HydraConfig.get().runtime.output_dir))


def start(argv: list[str]) -> None:
    from rlhf import synth

    install_hydra_reporter()  # errors inside the Hydra app: one line each
    config.register()
    if any(a.startswith("resume=") and a != "resume=" for a in argv):
        argv = synth.argv_for(argv)  # the run's own overrides and its directory
        if argv is None:  # finished: nothing to do
            return
    else:
        synth.check_new_run_dir(argv)
    sys.argv = [sys.argv[0], *argv]
    main()


if __name__ == "__main__":
    cli.run(start)

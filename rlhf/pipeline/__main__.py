"""`python -m rlhf.pipeline pipeline=<name> [common=[...]] [dir=...]`: run a pipeline's stages (rlhf/pipeline)."""

from __future__ import annotations

from rlhf import cli, config, pipeline


def main(argv: list[str]) -> None:
    pipeline.run(config.compose(argv, config_name="pipelines"))


if __name__ == "__main__":
    cli.run(main)

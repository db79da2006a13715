"""`python -m rlhf.plan [overrides]`: the estimated peak memory per device of the run these overrides describe,
term by term, against the profile's memory, before anything is downloaded or loaded.

Offline: the model's size comes from its config (the presets carry their numbers in model.architecture). It
ends with "fits: X of Y GB", a warning above 90%, or one line naming the largest term and the cheapest fix
(exit 2). A row's length is bounded by hardware.max_seq_length here; a run checks again with its data's
longest row (rlhf.plan.check). Only memory is judged: `python -m rlhf` validates the rest of the config.
"""

from __future__ import annotations

from rlhf import cli, config, hardware, methods, plan


def main(argv: list[str]) -> None:
    cfg = config.compose(argv)
    here = cfg.hardware.name == "auto"  # this machine's profile: compared with its own GPU or RAM
    # a named GPU profile is planned for as written, on any machine (no CUDA needed to plan for a T4); a cpu
    # profile's precision auto is this CPU's (bf16 autocast where it computes bf16)
    frozen = methods.frozen_base(cfg.method)
    if here:
        hw = config.resolve_hardware(cfg.hardware, argv, frozen)
    elif cfg.hardware.device == "cpu":
        hw = hardware.resolve(cfg.hardware, frozen)
    else:
        hw = hardware.typed(cfg.hardware)
    est = plan.estimate(cfg, hw)
    limit, where = plan.device_memory(hw, here)
    print(plan.table(est, cfg.model.name))
    if hw.device != "cpu":  # what sharding over more GPUs would buy
        print(plan.sharding_line(est))
    print(plan.verdict(est, limit, where, cfg.model.name))


if __name__ == "__main__":
    cli.run(main)

"""The optimizer stepped after backward against in backward (hardware.optimizer_in_backward): time per step.

    .venv/bin/python bench/in_backward.py [--steps 8] [--tokens 256] [--optims adamw_torch_fused,adafactor]

Loads the embedded model as full fine-tuning does (float32 weights, the profile's lean layers), then trains it
on one row of `--tokens` tokens, alternating the two ways step by step in one process, so that both see the
same machine at the same moment (a 2-core machine's speed drifts by ~25% over minutes): after backward, the
optimizer steps every weight and the gradients are freed (after their norm, which the trainer logs); in backward, the same optimizer steps each weight
as its gradient is whole (rlhf.models.in_backward). The two ways share the optimizer and its state, so the
weights progress as one run. Prints each way's median seconds per step and their ratio, per optimizer, on the
allocator runs use (rlhf.cli).
Memory is `bench/footprint.py`'s (a process's peak only rises): `--against hardware.optimizer_in_backward=true
method.max_grad_norm=0` there.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rlhf import cli, config, methods, models, runtime  # noqa: E402
from rlhf.models.in_backward import InBackward  # noqa: E402
from rlhf.models.lean import make_lean  # noqa: E402


def optimizer(name: str, params: list, lr: float) -> torch.optim.Optimizer:
    """The optimizer transformers' Trainer builds for hardware.optim=name (its defaults)."""
    if name == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(params, lr=lr, scale_parameter=False, relative_step=False)
    return torch.optim.AdamW(params, lr=lr, fused=name == "adamw_torch_fused")


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8, help="steps of each way (after a warm-up of each)")
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--optims", default="adamw_torch_fused,adafactor")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    cfg = config.compose(["method=sft", *args.overrides])
    hw = config.resolve_hardware(cfg.hardware, frozen_base=methods.frozen_base(cfg.method))
    model, _ = models.load(cfg.model, hw, cfg.cache_dir)
    model.train()
    if hw.lean_layers:
        make_lean(model)
    params = [p for p in model.parameters() if p.requires_grad]
    torch.manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (1, args.tokens))
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=hw.precision == "bf16")
    print(
        f"model={cfg.model.name}: {sum(p.numel() for p in params) / 1e6:.1f}M weights train at {hw.model_dtype}, "
        f"precision {hw.precision}; 1 x {args.tokens} tokens, {args.steps} steps of each way, alternating; "
        f"malloc {runtime.malloc()}"
    )
    print(f"{'optimizer':<20} {'after backward s':>17} {'in backward s':>14} {'ratio':>6}")
    for name in args.optims.split(","):
        inner = optimizer(name, params, cfg.method.learning_rate)
        times: dict[str, list[float]] = {"after": [], "in": []}
        for i in range(2 * (args.steps + 1)):
            way = "after" if i % 2 == 0 else "in"
            fused = InBackward(inner) if way == "in" else None
            start = time.perf_counter()
            with autocast:
                loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            if fused is None:  # the norm the trainer logs (in backward, the hooks measure it)
                torch.nn.utils.clip_grad_norm_(params, float("inf"))
                inner.step()
                inner.zero_grad(set_to_none=True)
            else:
                fused.remove()
            if i >= 2:  # the first step of each way builds the optimizer's state
                times[way].append(time.perf_counter() - start)
        after, within = statistics.median(times["after"]), statistics.median(times["in"])
        print(f"{name:<20} {after:>17.3f} {within:>14.3f} {within / after:>6.2f}", flush=True)
        for p in params:
            p.grad = None


if __name__ == "__main__":
    cli.run(main)  # on the allocator a run uses (tcmalloc where the machine has it), as `python -m rlhf`

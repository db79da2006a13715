"""Each hardware profile maps to the trainer arguments of PRODUCT.md; no TRL default leaks through."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from omegaconf import OmegaConf

from rlhf import hardware
from rlhf.methods import RunInfo
from rlhf.methods._common import field_choices, profile_batch, trainer_args
from tests.conftest import largest_tensor

# profile -> (bf16, fp16, batch, accumulation, checkpointing, optimizer, max length)
EXPECTED = {
    "t4": (False, True, 4, 4, True, "paged_adamw_32bit", 512),
    "a100": (True, False, 12, 2, False, "adamw_torch_fused", 1024),
    "rtx4060-8gb": (True, False, 1, 16, True, "paged_adamw_8bit", 256),
}
PREFERENCE = {"t4": (2, 8), "a100": (8, 2), "rtx4060-8gb": (1, 16)}


def inputs_for(cfg, hw):
    return SimpleNamespace(hardware=hw, config=cfg.method, run=RunInfo(dir=Path("/tmp/run"), seed=cfg.seed))


@pytest.mark.parametrize("profile", sorted(EXPECTED))
def test_gpu_profiles_map_to_the_documented_trainer_arguments(make_cfg, profile):
    cfg = make_cfg(f"hardware={profile}")
    hw = OmegaConf.to_object(cfg.hardware)  # a GPU profile's precision is already concrete
    args = trainer_args(inputs_for(cfg, hw), profile_batch(hw, "sft"))
    got = (
        args["bf16"],
        args["fp16"],
        args["per_device_train_batch_size"],
        args["gradient_accumulation_steps"],
        args["gradient_checkpointing"],
        args["optim"],
        args["max_length"],
    )
    assert got == EXPECTED[profile]
    assert args["activation_checkpointing"] == args["gradient_checkpointing"]
    assert args["use_cpu"] is False
    assert profile_batch(hw, "pref") == PREFERENCE[profile]
    assert args["tf32"] is (profile != "t4")


def test_cpu_profile_reaches_the_trainer_config_without_trl_defaults(make_cfg, tmp_path):
    from trl import SFTConfig

    cfg = make_cfg("hardware=cpu")
    hw = hardware.resolve(cfg.hardware)
    config = SFTConfig(**trainer_args(inputs_for(cfg, hw), profile_batch(hw, "sft")))
    # TRL defaults: bf16=True and gradient_checkpointing=True; the profile decides both
    assert config.bf16 == (hw.precision == "bf16") and hw.precision in ("bf16", "fp32")
    assert config.gradient_checkpointing is False and config.activation_checkpointing is False
    assert config.use_cpu and config.optim == "adamw_torch_fused" and config.max_length == 512
    assert config.save_strategy == "no" and config.report_to == []
    cfg32 = make_cfg("hardware=cpu", "hardware.precision=fp32")
    hw32 = hardware.resolve(cfg32.hardware)
    fp32 = SFTConfig(**trainer_args(inputs_for(cfg32, hw32), profile_batch(hw32, "sft")))
    assert fp32.bf16 is False and fp32.fp16 is False


def test_loss_types_are_read_from_trls_own_configs():
    from trl import DPOConfig, GRPOConfig

    dpo = field_choices(DPOConfig, "loss_type")
    assert {"sigmoid", "ipo", "hinge", "robust"} <= set(dpo) and "dapo" not in dpo
    assert {"grpo", "dr_grpo", "dapo", "bnpo"} <= set(field_choices(GRPOConfig, "loss_type"))


def test_the_cpu_profile_bounds_the_tiles_of_trls_fused_lm_head(make_cfg, monkeypatch):
    """TRL's fused LM head makes float32 copies of each tile where no Triton kernel runs: the cpu profile's
    tile bounds the largest tensor of a forward and backward, and the log-probs and gradients are TRL's."""
    import torch
    import trl.kernels.chunked_logprob as kernel
    import trl.trainer.utils as utils
    from transformers import LlamaConfig, LlamaForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    from rlhf.methods._common import head_tiles

    # TRL's own tile (as it ships: 4096 x 32768), whatever an earlier test's run set; restored after the test,
    # as head_tiles sets TRL's module constants for the process
    monkeypatch.setattr(kernel, "TOKEN_CHUNK_SIZE", 4096)
    monkeypatch.setattr(utils, "_CHUNKED_LOGPROB_CHUNK_SIZE", 32768)

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=8192, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2
    )
    model = LlamaForCausalLM(config)
    add_fused_lm_head(model)
    ids = torch.randint(0, 8192, (2, 300))

    def run():
        model.zero_grad()
        with largest_tensor(floating_only=True) as largest:
            out = model(input_ids=ids, labels=ids, fused_lm_head=True)
            out.loss.backward()
        return out.log_probs.detach(), model.lm_head.weight.grad.clone(), largest.numel

    logp_trl, grad_trl, numel_trl = run()  # TRL's tile: every position x 8192 entries at once
    hw = hardware.resolve(make_cfg("hardware=cpu").hardware)
    assert head_tiles(hw) == (hw.head_tile_tokens, hw.head_tile_vocab) == (256, 4096)
    logp, grad, numel = run()
    assert numel_trl >= 2 * 299 * 8192
    assert numel <= max(256 * 4096, 8192 * 32)  # a tile, or the head's own weight (its gradient)
    torch.testing.assert_close(logp, logp_trl)
    torch.testing.assert_close(grad, grad_trl, rtol=1e-4, atol=1e-6)


def _uneven_pairs(n: int) -> list[dict]:
    """Preference pairs of different lengths, so that every batch of them has padding."""
    return [
        {
            "prompt": [{"role": "user", "content": "Question " + "and more " * (i % 5) + "?"}],
            "chosen": [{"role": "assistant", "content": "yes please " * (1 + i % 4)}],
            "rejected": [{"role": "assistant", "content": "no way " * (1 + (i * 3) % 7)}],
        }
        for i in range(n)
    ]


@pytest.mark.parametrize("method", ["dpo", "rm"])
def test_packed_rows_train_as_padded_ones_on_fewer_positions(make_cfg, tiny, tmp_path, method):
    """hardware.pack_rows (the cpu profile's): a preference trainer's padded batches reach the decoder as
    their tokens only, and training ends on the same weights as with the padding (float32: to rounding)."""
    import importlib

    import torch

    from rlhf import models
    from tests.conftest import make_inputs, positions_through

    train = importlib.import_module(f"rlhf.methods.{method}").train
    weights, positions = {}, {}
    for pack in (False, True):
        # SGD: an update in proportion to the gradient, so the weights part as the gradients do. Adam divides by
        # the root of a gradient's square, so an element whose gradient is ~0 moves by its rounding: AdamW moved
        # one element of 1024 by 1.7e-5 (fused) / 4e-6 (foreach) on an AVX-512 machine and by 7.7e-5 (foreach)
        # on an AVX2-only one at lr 1e-2, where SGD's weights agree to 7.5e-9 (its LoRA B, ~1e-4, to 3e-11)
        overrides = ("model=tiny", "hardware=cpu", f"method={method}", "hardware.precision=fp32")
        cfg = make_cfg(
            *overrides, "method.max_steps=3", "method.learning_rate=1e-1", f"hardware.pack_rows={pack}",
            "hardware.optim=sgd",
        )  # fmt: skip
        head = "sequence-classification" if method == "rm" else "causal-lm"
        torch.manual_seed(0)  # the reward head is initialised at random when the model loads
        model, tokenizer = models.load(cfg.model, hardware.resolve(cfg.hardware), cfg.cache_dir, head=head)
        positions[pack] = positions_through(model.model.layers[0])
        result = train(make_inputs(cfg, model, tokenizer, _uneven_pairs(12), tmp_path / str(pack)))
        weights[pack] = {n: p.detach().clone() for n, p in result.model.named_parameters() if p.requires_grad}
    assert sum(positions[True]) < 0.9 * sum(positions[False])
    for name, padded in weights[False].items():
        torch.testing.assert_close(weights[True][name], padded, rtol=1e-4, atol=1e-7, msg=name)


def test_a_schedules_own_settings_reach_the_trainer(rlhf_cli, tmp_path):
    """method.lr_scheduler_kwargs: cosine_with_min_lr with min_lr_rate=0.5 follows a cosine from the learning rate
    down to half of it, step by step (a schedule without its floor would not even start: transformers requires
    min_lr or min_lr_rate, and the run refuses it before training, tests/test_errors.py)."""
    import json
    import math

    out = rlhf_cli(
        "model=tiny", "hardware=cpu", "method=sft", "method.max_steps=6", "method.learning_rate=0.01",
        "method.warmup_ratio=0", "method.lr_scheduler_type=cosine_with_min_lr",
        "+method.lr_scheduler_kwargs.min_lr_rate=0.5", "eval=none", "logger=none", "samples.max_new_tokens=2",
        f"hydra.run.dir={tmp_path}",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    rates = [r["learning_rate"] for r in rows if "learning_rate" in r]
    # each step logs the rate it trained at: the schedule at steps 0..5 of 6
    expected = [0.005 + 0.005 * 0.5 * (1 + math.cos(math.pi * step / 6)) for step in range(6)]
    assert rates == pytest.approx(expected, rel=1e-6)

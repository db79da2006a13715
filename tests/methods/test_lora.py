"""method=lora on the tiny model: the adapter trains, the base weights stay as they were; QLoRA on CPU."""

from __future__ import annotations

import pytest
import torch

from rlhf import data, generation
from rlhf.methods import lora
from tests.conftest import make_inputs


def run_lora(make_cfg, tiny, tmp_path, *overrides, generate_first=False):
    cfg = make_cfg(
        "model=tiny",
        "hardware=cpu",
        "method=lora",
        "method.max_steps=3",
        "method.learning_rate=1e-2",
        *overrides,
    )
    model, tokenizer = tiny(*overrides)
    base = {n: p.detach().clone().float() for n, p in model.named_parameters()}
    if generate_first:  # what the entrypoint does for samples.jsonl before training
        generation.greedy(model, tokenizer, [[{"role": "user", "content": "Hi"}]], cfg.samples.max_new_tokens)
    rows = data.load(cfg.data, lora.DATA_FORMATS, "lora").rows[:12]
    result = lora.train(make_inputs(cfg, model, tokenizer, rows, tmp_path))
    return cfg, result, base


def adapter_and_base(model):
    params = dict(model.named_parameters())
    adapter = {n: p for n, p in params.items() if "lora_" in n}
    base = {
        n.replace("base_model.model.", "").replace(".base_layer", ""): p
        for n, p in params.items()
        if "lora_" not in n
    }
    return adapter, base


def test_lora_trains_the_adapter_and_leaves_the_base_unchanged(make_cfg, tiny, tmp_path):
    cfg, result, before = run_lora(make_cfg, tiny, tmp_path)
    adapter, base = adapter_and_base(result.model)
    assert adapter and all(p.requires_grad for p in adapter.values())
    # lora_B starts at zero: every B moved away from it
    assert all(p.abs().sum() > 0 for n, p in adapter.items() if "lora_B" in n)
    assert set(base) == set(before)
    assert all(torch.equal(before[n], p.detach().float()) for n, p in base.items())
    assert all(not p.requires_grad for p in base.values())


def test_lora_rank_and_targets_come_from_the_config(make_cfg, tiny, tmp_path):
    cfg, result, _ = run_lora(
        make_cfg, tiny, tmp_path, "method.lora_r=2", "method.target_modules=[q_proj,v_proj]"
    )
    adapter, _ = adapter_and_base(result.model)
    assert {n.split(".")[-4] for n in adapter} == {"q_proj", "v_proj"}
    assert all(p.shape[0] == 2 for n, p in adapter.items() if "lora_A" in n)


def test_qlora_trains_every_adapter_tensor_on_cpu_even_after_generation(make_cfg, tiny, tmp_path):
    import bitsandbytes as bnb

    cfg, result, _ = run_lora(
        make_cfg,
        tiny,
        tmp_path,
        "hardware.load_in_4bit=true",
        "method.max_steps=1",
        "method.warmup_ratio=0",
        generate_first=True,
    )
    quantized = [m for m in result.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert quantized and quantized[0].weight.quant_state.quant_type == "nf4"
    adapter, _ = adapter_and_base(result.model)
    # bitsandbytes repacks 4-bit weights for CPU inference; without models.keep_4bit_trainable no gradient
    # passes through them afterwards, and after one step the lower layers' lora_B (all 0 at the start) stay 0
    untrained = [n for n, p in adapter.items() if "lora_B" in n and p.abs().sum() == 0]
    assert not untrained, untrained


@pytest.mark.parametrize(  # a bf16 base cannot unmerge exactly: its weights are kept aside
    "profile",
    [
        ["hardware.precision=fp32", "hardware.model_dtype=float32"],
        ["hardware.precision=bf16", "hardware.model_dtype=bfloat16"],
    ],
    ids=["float32", "bfloat16"],
)
def test_sample_generations_run_merged_and_leave_the_adapter_as_it_was(
    make_cfg, tiny, tmp_path, monkeypatch, profile
):
    import contextlib

    cfg, result, _ = run_lora(make_cfg, tiny, tmp_path, "samples.max_new_tokens=6", *profile)
    _, tokenizer = tiny()
    weights = {n: p.detach().clone() for n, p in result.model.named_parameters()}
    prompts = [[{"role": "user", "content": "Hi"}], [{"role": "user", "content": "Name a colour."}]]
    seen, original = [], generation.lora_merged

    @contextlib.contextmanager
    def spy(model):  # the adapter is folded in while the samples generate
        with original(model):
            seen.append([m.merged for m in model.modules() if hasattr(m, "merged")])
            yield

    monkeypatch.setattr(generation, "lora_merged", spy)
    merged = generation.greedy(result.model, tokenizer, prompts, cfg.samples.max_new_tokens)
    assert len(seen) == 1 and seen[0] and all(seen[0])
    assert not any(getattr(m, "merged", False) for m in result.model.modules())
    for name, p in result.model.named_parameters():  # unmerging subtracts what merging added: fp32 rounding
        torch.testing.assert_close(p, weights[name], atol=1e-6, rtol=1e-6)
    monkeypatch.setattr(generation, "lora_merged", lambda model: contextlib.nullcontext())
    assert generation.greedy(result.model, tokenizer, prompts, cfg.samples.max_new_tokens) == merged

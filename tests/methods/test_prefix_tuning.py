"""method=prefix-tuning on the tiny model: only the prefix trains, the saved adapter reloads the same, greedy
samples work; gradient checkpointing is refused."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from rlhf import data, generation, models
from rlhf.errors import ConfigError
from rlhf.methods import prefix_tuning, sft
from rlhf.validate import check_resolved_profile, validate
from tests.conftest import make_inputs

PROMPTS = [[{"role": "user", "content": "Hi"}], [{"role": "user", "content": "Name three colours, please."}]]


def test_only_the_prefix_trains_and_the_saved_adapter_reloads_the_same(make_cfg, tiny, tmp_path, monkeypatch):
    cfg = make_cfg(
        "model=tiny",
        "hardware=cpu",
        "hardware.precision=fp32",
        "method=prefix-tuning",
        "method.max_steps=3",
        "method.num_virtual_tokens=4",
    )  # fmt: skip  (fp32: under bf16 the trained model's forward keeps accelerate's autocast; a reload not)
    model, tokenizer = tiny()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    initial = {}
    build = sft.build_trainer

    def keep_initial_prefix(inputs, adapter=None):  # the prefix is initialised inside the trainer
        trainer = build(inputs, adapter)
        initial["prefix"] = trainer.model.prompt_encoder.default.embedding.weight.detach().clone()
        return trainer

    monkeypatch.setattr(sft, "build_trainer", keep_initial_prefix)
    rows = data.load(cfg.data, prefix_tuning.DATA_FORMATS, "prefix-tuning").rows[:12]
    result = prefix_tuning.train(make_inputs(cfg, model, tokenizer, rows, tmp_path))

    # a key and a value per layer and virtual token: 4 x (2 layers x 2 x 2 kv heads x 16 dims)
    trainable = {n: p for n, p in result.model.named_parameters() if p.requires_grad}
    assert list(trainable) == ["prompt_encoder.default.embedding.weight"]
    prefix = trainable["prompt_encoder.default.embedding.weight"].detach()
    kv_width = 2 * model.config.num_hidden_layers * model.config.num_key_value_heads * 16
    assert prefix.shape == (4, kv_width) and not torch.equal(prefix, initial["prefix"])
    base = result.model.get_base_model()
    assert all(torch.equal(before[n], p) for n, p in base.named_parameters())

    # greedy samples (a left-padded batch, as for samples.jsonl); the saved adapter: same logits, same text
    samples = generation.greedy(result.model, tokenizer, PROMPTS, 8)
    assert len(samples) == 2 and all(isinstance(s, str) for s in samples)
    models.save(result.model, tokenizer, tmp_path / "model")
    assert (tmp_path / "model" / "adapter_model.safetensors").is_file()
    from peft import PeftModel

    reloaded = PeftModel.from_pretrained(tiny()[0], tmp_path / "model").eval()
    batch = generation.encode_chat_prompts(tokenizer, PROMPTS, "cpu")
    result.model.eval()
    with torch.no_grad():
        assert torch.equal(result.model(**batch).logits, reloaded(**batch).logits)
    assert generation.greedy(reloaded, tokenizer, PROMPTS, 8) == samples


def test_prefix_tuning_refuses_gradient_checkpointing(make_cfg, tiny, tmp_path):
    overrides = ("model=tiny", "method=prefix-tuning", "hardware=cpu", "hardware.gradient_checkpointing=true")
    line = (
        "hardware.gradient_checkpointing=true: prefix tuning fails under gradient checkpointing (the "
        "checkpointed layers drop the prefix's keys and values); fix: hardware.gradient_checkpointing=false"
    )
    with pytest.raises(ConfigError) as e:
        validate(make_cfg(*overrides))
    assert e.value.problems == [line]
    validate(make_cfg("method=prompt-tuning", "hardware=t4"))  # prompt tuning checkpoints fine
    # hardware=auto picks its profile after validate: the run checks the one it picked again (t4 checkpoints)
    picked = OmegaConf.to_object(make_cfg("hardware=t4").hardware)
    with pytest.raises(ConfigError) as e:
        check_resolved_profile(make_cfg("model=tiny", "method=prefix-tuning"), picked)
    assert e.value.problems == [line]

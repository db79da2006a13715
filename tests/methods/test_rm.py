"""method=rm on the tiny model: the reward model learns the preference, and reward=model accepts its output."""

from __future__ import annotations

from rlhf import hardware, models, rewards
from rlhf.methods import rm
from tests.conftest import make_inputs


def pairs(n: int) -> list[dict]:
    """Chosen answers say 'yes please', rejected ones 'no way': learnable in a few steps."""
    return [
        {
            "prompt": [{"role": "user", "content": f"Question {i}?"}],
            "chosen": [{"role": "assistant", "content": "yes please " * 3}],
            "rejected": [{"role": "assistant", "content": "no way " * 3}],
        }
        for i in range(n)
    ]


def test_reward_model_learns_pairs_and_loads_as_a_reward(make_cfg, tmp_path):
    cfg = make_cfg(
        "model=tiny", "hardware=cpu", "method=rm", "method.max_steps=12", "method.learning_rate=5e-3"
    )
    model, tokenizer = models.load(cfg.model, hardware.resolve(cfg.hardware), cfg.cache_dir, rm.HEAD)
    result = rm.train(make_inputs(cfg, model, tokenizer, pairs(16), tmp_path, eval_rows=pairs(8)))
    assert result.extra["heldout_pairwise_accuracy"] == 1.0

    models.save(result.model, tokenizer, tmp_path / "model")
    assert (tmp_path / "model" / "adapter_model.safetensors").is_file()
    score = rewards.model_reward(str(tmp_path / "model"))
    good, bad = score(prompts=["Question 99?"] * 2, completions=["yes please " * 3, "no way " * 3])
    assert good > bad


def test_full_reward_model_trains_every_weight(make_cfg, tmp_path):
    import torch

    cfg = make_cfg("model=tiny", "hardware=cpu", "method=rm", "method.adapter=none", "method.max_steps=2")
    model, tokenizer = models.load(
        cfg.model, hardware.resolve(cfg.hardware, frozen_base=False), cfg.cache_dir, rm.HEAD
    )
    head = model.score.weight.detach().clone()
    result = rm.train(make_inputs(cfg, model, tokenizer, pairs(8), tmp_path))
    assert not torch.equal(head, result.model.score.weight)
    assert models.trainable_parameters(result.model)[0] == models.trainable_parameters(result.model)[1]

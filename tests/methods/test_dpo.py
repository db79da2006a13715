"""method=dpo on the tiny model: LoRA with the adapter-disabled base as reference; full with a frozen copy."""

from __future__ import annotations

import torch

from rlhf import models
from rlhf.methods import dpo
from tests.conftest import Rows, make_inputs
from tests.methods.test_rm import pairs


def test_lora_dpo_raises_the_chosen_margin_without_a_second_model(make_cfg, tiny, tmp_path):
    cfg = make_cfg(
        "model=tiny", "hardware=cpu", "method=dpo", "method.max_steps=8", "method.learning_rate=1e-2"
    )
    model, tokenizer = tiny()
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = dpo.train(make_inputs(cfg, model, tokenizer, pairs(16), tmp_path))
    assert result.extra["reward_margin"] > 0 and result.extra["preference_accuracy"] > 0.5
    assert sum(p.numel() for p in result.model.parameters()) < 1.2 * sum(p.numel() for p in base.values())
    with result.model.disable_adapter():  # the reference: the untouched base
        for name, p in result.model.get_base_model().named_parameters():
            key = name.replace(".base_layer", "")
            if key in base:
                assert torch.equal(base[key], p)


def test_a_lora_dropout_applies_although_trl_turns_every_dropout_off(make_cfg, tiny, tmp_path):
    cfg = make_cfg(
        "model=tiny", "hardware=cpu", "method=dpo", "method.max_steps=2", "method.learning_rate=1e-2",
        "method.lora_dropout=0.5",
    )  # fmt: skip
    model, tokenizer = tiny()
    policy = dpo.train(make_inputs(cfg, model, tokenizer, pairs(8), tmp_path)).model.train()
    ids = torch.randint(5, policy.config.vocab_size, (2, 16))
    with torch.no_grad():
        # the adapter draws a new dropout mask each pass (TRL had set its p to 0 with every other dropout)
        assert not torch.equal(policy(input_ids=ids).logits, policy(input_ids=ids).logits)
        with policy.disable_adapter():  # the reference: the base, whose dropouts stay off
            assert torch.equal(policy(input_ids=ids).logits, policy(input_ids=ids).logits)


def test_full_dpo_uses_a_frozen_reference_copy(make_cfg, tiny, tmp_path):
    cfg = make_cfg(
        "model=tiny",
        "hardware=cpu",
        "method=dpo",
        "method.adapter=none",
        "method.max_steps=3",
        "method.learning_rate=1e-3",
    )
    model, tokenizer = tiny("method=dpo", "method.adapter=none")  # float32: every weight trains
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    copies = []
    original = dpo.frozen_copy

    def spy(m):
        copies.append(original(m))
        return copies[-1]

    dpo.frozen_copy, log = spy, Rows()
    try:
        result = dpo.train(make_inputs(cfg, model, tokenizer, pairs(8), tmp_path, log))
    finally:
        dpo.frozen_copy = original
    assert models.trainable_parameters(result.model)[0] == models.trainable_parameters(result.model)[1]
    (ref,) = copies
    assert ref is not result.model and not any(p.requires_grad for p in ref.parameters())
    # the reference stayed where the policy started, while every step moved the policy away from it ...
    assert all(torch.equal(initial[n], p) for n, p in ref.named_parameters())
    assert any(not torch.equal(initial[n], p) for n, p in result.model.named_parameters())
    # ... so DPO's implicit rewards, beta x (log pi - log pi_ref), start at 0 and then do not
    chosen = [r["rewards/chosen"] for r in log.rows if "rewards/chosen" in r]
    assert abs(chosen[0]) < 1e-6 and abs(chosen[-1]) > 1e-6, chosen


def test_heldout_pairs_are_scored_on_a_schedule_and_at_the_end(make_cfg, tiny, tmp_path):
    """Held-out pairs the policy never trained on: their preference accuracy every eval_steps and at the end.
    The pairs are learnable, so after training the held-out chosen answers win."""
    cfg = make_cfg(
        "model=tiny", "hardware=cpu", "method=dpo", "method.max_steps=8", "method.learning_rate=1e-2",
        "method.eval_steps=4",
    )  # fmt: skip
    model, tokenizer = tiny()
    log = Rows()
    heldout = [dict(p, prompt=[{"role": "user", "content": f"Other {i}?"}]) for i, p in enumerate(pairs(4))]
    result = dpo.train(make_inputs(cfg, model, tokenizer, pairs(16), tmp_path, log, eval_rows=heldout))
    evals = [r for r in log.rows if "eval_rewards/accuracies" in r]
    assert [r["step"] for r in evals] == [4, 8]
    assert result.extra["heldout_preference_accuracy"] == evals[-1]["eval_rewards/accuracies"] == 1.0
    assert result.extra["heldout_reward_margin"] > 0

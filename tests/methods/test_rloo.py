"""method=rloo on the tiny model: TRL's RLOOTrainer with the reward group's callables and weights."""

from __future__ import annotations

import pytest
import torch

from rlhf import data, rewards
from rlhf.errors import ConfigError
from rlhf.methods import rloo
from rlhf.validate import validate
from tests.conftest import make_inputs


def test_rloo_trains_the_adapter_on_the_weighted_rewards(make_cfg, tiny, tmp_path):
    cfg = make_cfg(
        "model=tiny", "hardware=cpu", "method=rloo", "method.max_steps=2", "method.num_generations=4",
        "method.learning_rate=1e-2",
    )  # fmt: skip
    model, tokenizer = tiny()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    rows = data.load(cfg.data, rloo.DATA_FORMATS, "rloo").rows
    calls = []

    def length(prompts, completions, **kwargs):  # differs between completions: leave-one-out advantages != 0
        calls.append(len(completions))
        return [float(len(rewards.text_of(c))) for c in completions]

    def constant(prompts, completions, **kwargs):
        return [1.0] * len(completions)

    components = [rewards.Reward("length", length, 1.0), rewards.Reward("constant", constant, 0.5)]
    inputs = make_inputs(cfg, model, tokenizer, rows, tmp_path, rewards=components)
    result = rloo.train(inputs)

    assert calls == [4, 4]  # num_generations completions of one prompt per step
    logged = [r for r in inputs.metrics.rows if "reward" in r]
    assert len(logged) == 2 and all("kl" in r for r in logged)  # beta 0.05: a KL to the reference
    for r in logged:  # the reward is the weighted sum of the components
        expected = r["rewards/length/mean"] + 0.5 * r["rewards/constant/mean"]
        assert r["reward"] == pytest.approx(expected, rel=1e-5)
    assert result.extra["final_reward_mean"] == logged[-1]["reward"]

    # every lora_B starts at 0: each one moved; the base, seen with the adapter disabled, did not
    params = dict(result.model.named_parameters())
    moved = {n: bool(p.abs().sum() > 0) for n, p in params.items() if "lora_B" in n}
    assert moved and all(moved.values()), [n for n, ok in moved.items() if not ok]
    with result.model.disable_adapter():
        for name, p in result.model.get_base_model().named_parameters():
            key = name.replace(".base_layer", "")
            if key in before:
                assert torch.equal(before[key], p)


def test_rloo_refuses_a_group_of_one(make_cfg):
    with pytest.raises(ConfigError) as e:
        validate(make_cfg("method=rloo", "method.num_generations=1", "method.beta=-1"))
    assert e.value.problems == [
        "method.beta=-1.0: must be >= 0; fix: use e.g. beta=0.04",
        "method.num_generations=1: must be >= 2 (advantages compare a group); fix: use e.g. 4 or 8",
    ]


def test_rloo_takes_trls_update_and_clip_options(make_cfg, tiny, tmp_path):
    """num_iterations=2: one generation serves two updates (the reward is called once for two steps), and a
    checkpoint may only fall between generations; DAPO's clip-higher, masking and normalised advantages
    reach TRL's trainer and train."""
    from rlhf import checkpoint

    cfg = make_cfg(
        "model=tiny", "hardware=cpu", "method=rloo", "method.max_steps=2", "method.num_generations=4",
        "method.num_iterations=2", "method.epsilon_high=0.28", "method.mask_truncated_completions=true",
        "method.normalize_advantages=true",
    )  # fmt: skip
    model, tokenizer = tiny()
    calls = []

    def length(prompts, completions, **kwargs):
        calls.append(len(completions))
        return [float(i) for i in range(len(completions))]  # a spread in every group: advantages != 0

    plan = checkpoint.Plan(run_dir=tmp_path, every=1, keep=1, at_end=False)
    rows = data.load(cfg.data, rloo.DATA_FORMATS, "rloo").rows
    inputs = make_inputs(
        cfg,
        model,
        tokenizer,
        rows,
        tmp_path,
        rewards=[rewards.Reward("spread", length, 1.0)],
        checkpoints=plan,
    )
    rloo.train(inputs)
    assert calls == [4]
    assert plan.boundary == 2 and plan.saves.steps == [2]  # every=1, but step 1 is mid-generation
    assert [r["step"] for r in inputs.metrics.rows if "loss" in r] == [1, 2]  # two updates, one generation

"""method=grpo on the tiny model: TRL's GRPOTrainer with the reward group's callables."""

from __future__ import annotations

import pytest

from rlhf import data, rewards
from rlhf.errors import UserError
from rlhf.methods import grpo
from tests.conftest import make_inputs


def test_grpo_trains_the_adapter_on_every_reward_component(make_cfg, tiny, tmp_path):
    from rlhf.metrics import MetricsFile

    cfg = make_cfg(
        "model=tiny", "hardware=cpu", "method=grpo", "method.max_steps=2", "method.num_generations=4",
        "method.learning_rate=1e-2",
    )  # fmt: skip
    model, tokenizer = tiny()
    rows = data.load(cfg.data, grpo.DATA_FORMATS, "grpo").rows
    calls = []
    (keyword,) = rewards.build(cfg.reward)
    score = keyword.func

    def counting(prompts, completions, **kwargs):
        calls.append(len(completions))
        return score(prompts=prompts, completions=completions)

    def length(prompts, completions, **kwargs):  # the random tiny model never says a keyword: this varies
        return [float(len(rewards.text_of(c))) for c in completions]

    counting.__name__ = "keyword"
    keyword.func = counting
    log = MetricsFile(tmp_path / "metrics.jsonl")
    components = [keyword, rewards.Reward("length", length, 0.1)]
    heldout = [{"prompt": [{"role": "user", "content": "I am quite"}]}]
    inputs = make_inputs(cfg, model, tokenizer, rows, tmp_path, log, rewards=components, eval_rows=heldout)
    result = grpo.train(inputs)
    assert calls == [4, 4, 1]  # num_generations completions of one prompt per step; the held-out prompt
    # its reward: the weighted sum for a greedy answer (the tiny model says no keyword: 0.1 x its length)
    chars = result.extra["heldout_reward_mean"] / 0.1
    assert chars > 0 and chars == pytest.approx(round(chars))
    logged = [r for r in log.rows if "rewards/keyword/mean" in r]
    assert len(logged) == 2 and all("rewards/length/mean" in r for r in logged)
    assert result.extra["final_reward_mean"] == logged[-1]["reward"]
    # every lora_B starts at 0: it moved only if the rewards' advantages reached it
    moved = [bool(p.abs().sum() > 0) for n, p in result.model.named_parameters() if "lora_B" in n]
    assert moved and all(moved)


def test_4bit_grpo_policy_trains_every_adapter_tensor(make_cfg, tiny, tmp_path):
    cfg = make_cfg(
        "model=tiny", "hardware=cpu", "hardware.load_in_4bit=true", "method=grpo", "method.max_steps=1",
        "method.num_generations=4", "method.learning_rate=1e-2",
    )  # fmt: skip
    model, tokenizer = tiny("hardware.load_in_4bit=true")
    rows = data.load(cfg.data, grpo.DATA_FORMATS, "grpo").rows

    def length(prompts, completions, **kwargs):  # differs between completions: non-zero advantages every step
        return [float(len(rewards.text_of(c))) for c in completions]

    inputs = make_inputs(
        cfg,
        model,
        tokenizer,
        rows,
        tmp_path,
        rewards=[rewards.Reward("length", length, 1.0)],
    )
    result = grpo.train(inputs)
    # GRPO generates with the 4-bit weights before its first backward pass. Every lora_B starts at 0, so after
    # one step it has moved only if gradient reached it through the frozen 4-bit layers above it.
    moved = {n: bool(p.abs().sum() > 0) for n, p in result.model.named_parameters() if "lora_B" in n}
    assert moved and all(moved.values()), [n for n, ok in moved.items() if not ok]


def grpo_loss_types() -> list[str]:
    from trl import GRPOConfig

    from rlhf.methods._common import field_choices

    return field_choices(GRPOConfig, "loss_type")


@pytest.mark.parametrize("loss_type", grpo_loss_types())
def test_each_of_trls_grpo_loss_types_trains_a_step(make_cfg, tiny, tmp_path, loss_type):
    extra = ["method.epsilon_high=0.28"] if loss_type in ("dapo", "cispo") else []
    cfg = make_cfg(
        "model=tiny", "hardware=cpu", "method=grpo", "method.max_steps=1", "method.num_generations=4",
        "method.learning_rate=1e-2", f"method.loss_type={loss_type}", *extra,
    )  # fmt: skip
    model, tokenizer = tiny()
    rows = data.load(cfg.data, grpo.DATA_FORMATS, "grpo").rows

    def length(prompts, completions, **kwargs):
        return [float(len(rewards.text_of(c))) for c in completions]

    inputs = make_inputs(
        cfg, model, tokenizer, rows, tmp_path, rewards=[rewards.Reward("length", length, 1.0)]
    )
    try:
        result = grpo.train(inputs)
    except UserError as e:  # a combination TRL refuses when it builds the trainer: one line naming it
        assert str(e).startswith("method.") and "; fix: " in str(e) and "\n" not in str(e)
        return
    moved = [bool(p.abs().sum() > 0) for n, p in result.model.named_parameters() if "lora_B" in n]
    assert moved and all(moved), loss_type

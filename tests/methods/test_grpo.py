"""method=grpo on the tiny model: TRL's GRPOTrainer with the reward group's callables."""

from __future__ import annotations

from rlhf import data, rewards
from rlhf.methods import Inputs, grpo
from tests.conftest import trainer_args


def test_grpo_trains_the_adapter_with_the_keyword_reward(make_cfg, tiny, tmp_path):
    from rlhf.report import MetricsFile

    cfg = make_cfg(
        "model=tiny", "hardware=cpu", "method=grpo", "method.max_steps=2", "method.num_generations=4"
    )
    model, tokenizer = tiny()
    rows = data.load(cfg.data, grpo.DATA_FORMATS, "grpo").rows
    calls = []
    (keyword,) = rewards.build(cfg.reward)
    score = keyword.func

    def counting(prompts, completions, **kwargs):
        calls.append(len(completions))
        return score(prompts=prompts, completions=completions)

    counting.__name__ = "keyword"
    keyword.func = counting
    log = MetricsFile(tmp_path / "metrics.jsonl")
    result = grpo.train(
        Inputs(model, tokenizer, rows, cfg.method, trainer_args(cfg, tmp_path), [log], rewards=[keyword])
    )
    assert calls == [4, 4]  # num_generations completions of one prompt per step
    assert any("rewards/keyword/mean" in r for r in log.rows)
    assert result.extra["final_reward_mean"] is not None
    assert any("lora_" in n for n, p in result.model.named_parameters() if p.requires_grad)

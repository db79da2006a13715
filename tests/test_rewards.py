"""The reward group: GRPO-signature callables, whole-word keyword matching, weighted mixes, reward models."""

from __future__ import annotations

import pytest
import torch

from rlhf import rewards
from rlhf.errors import UserError


def test_keyword_reward_matches_whole_words_in_any_case(make_cfg):
    (reward,) = rewards.build(make_cfg("reward=keyword").reward)
    completions = ["I am so HAPPY today", "unhappy and sad", "a good day", "goodness me", "joy!"]
    assert reward.func(prompts=[""] * 5, completions=completions) == [1.0, -1.0, 1.0, -1.0, 1.0]


def test_keyword_reward_reads_chat_messages(make_cfg):
    (reward,) = rewards.build(make_cfg("reward=keyword", "reward.words=[glad]").reward)
    completions = [
        [{"role": "assistant", "content": "So glad."}],
        [{"role": "assistant", "content": "Happy."}],
    ]
    assert reward.func(prompts=[[{"role": "user", "content": "I feel so"}]] * 2, completions=completions) == [
        1.0,
        -1.0,
    ]


def test_mix_sums_weighted_components_and_keeps_each(make_cfg, tmp_path, tiny):
    from rlhf import models

    model, tokenizer = tiny()  # any model directory with a config loads as a (random) reward model
    models.save(model, tokenizer, tmp_path / "rm")
    cfg = make_cfg("reward=mix", f"reward.model_path={tmp_path}/rm", "reward.weights=[2.0,0.0]").reward
    components = rewards.build(cfg)
    assert [c.name for c in components] == ["keyword", "model"]
    summed, parts = rewards.total(components, ["p", "p"], ["happy", "sad"])
    assert summed == [2.0, -2.0]  # the model's weight is 0 here: only the keyword part counts
    assert parts["keyword"] == [1.0, -1.0] and len(parts["model"]) == 2


def test_model_reward_scores_prompt_and_completion(tmp_path, tiny):
    from rlhf import models

    model, tokenizer = tiny()
    models.save(model, tokenizer, tmp_path / "rm")
    torch.manual_seed(0)  # its score head is initialised at random as it loads: scores at bf16 could tie
    score = rewards.model_reward(str(tmp_path / "rm"))
    a, b = score(prompts=["Say hi", "Say hi"], completions=["hello there", "go away now"])
    assert isinstance(a, float) and a != b
    assert score(prompts=["Say hi"], completions=["hello there"]) == pytest.approx([a], abs=1e-4)


def test_model_reward_needs_a_path():
    with pytest.raises(UserError, match="reward.model_path=''"):
        rewards.model_reward("")

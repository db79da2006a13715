"""The reward group -> reward callables with the signature of TRL GRPO's reward functions.

    reward(prompts, completions, **kwargs) -> list[float]

`prompts` and `completions` are either strings or chat messages (lists of {role, content}); each call
scores a batch. The same callables serve `method=grpo` (TRL) and `method=ppo` (ours). `build` returns them
as (name, function, weight) so every component is logged on its own and summed with its weight.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from rlhf.errors import UserError

RewardFunc = Callable[..., list[float]]


@dataclass
class Reward:
    name: str
    func: RewardFunc
    weight: float


def build(cfg: DictConfig) -> list[Reward]:
    """The reward components of `cfg` (the reward group's node; `validate` has checked mix's weights)."""
    if cfg.name == "mix":
        return [
            Reward(name, _component(name, cfg), float(w))
            for name, w in zip(cfg.components, cfg.weights, strict=True)
        ]
    return [Reward(cfg.name, _component(cfg.name, cfg), 1.0)]


def total(
    rewards: list[Reward], prompts: list, completions: list
) -> tuple[list[float], dict[str, list[float]]]:
    """The weighted sum per completion, and each component's raw scores (for logging)."""
    parts = {r.name: r.func(prompts=prompts, completions=completions) for r in rewards}
    summed = [sum(r.weight * parts[r.name][i] for r in rewards) for i in range(len(completions))]
    return summed, parts


def _component(name: str, cfg: DictConfig) -> RewardFunc:
    if name == "keyword":
        return keyword_reward(list(cfg.words))
    if name == "model":
        return model_reward(cfg.model_path, cfg.template)
    raise UserError(f"reward.components={name}: unknown reward; fix: use keyword or model")


def text_of(item: Any) -> str:
    """The text of a completion or prompt given as a string or as chat messages."""
    if isinstance(item, str):
        return item
    return "".join(m["content"] for m in item)


def keyword_reward(words: list[str]) -> RewardFunc:
    """+1 if the completion contains one of `words` as a whole word (any case), else -1 (seed 000)."""
    if not words:
        raise UserError(
            "reward.words=[]: the keyword reward needs words; fix: e.g. 'reward.words=[happy,glad]'"
        )
    pattern = re.compile(r"\b(" + "|".join(re.escape(w) for w in words) + r")\b", re.IGNORECASE)

    def keyword(prompts: list, completions: list, **kwargs: Any) -> list[float]:
        return [1.0 if pattern.search(text_of(c)) else -1.0 for c in completions]

    return keyword


def model_reward(path: str, template: str | None = None) -> RewardFunc:
    """Scores prompt + completion with a sequence-classification model in its chat format, or through
    `template` (reward.template) where its tokenizer has no chat template.

    `path` is a run's model/ directory from `method=rm` (a LoRA adapter or full weights), any local
    sequence-classification model directory, or a hub id.
    """
    if not path:
        raise UserError(
            "reward.model_path='': the model reward needs a reward model; fix: set reward.model_path to a "
            "method=rm run's model/ directory, or a sequence-classification model id"
        )
    model, tokenizer = load_reward_model(path)

    def model_score(prompts: list, completions: list, **kwargs: Any) -> list[float]:
        return score(model, tokenizer, prompts, completions, template).tolist()

    return model_score


def load_reward_model(path: str):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    local = Path(path).expanduser()
    if local.exists() and not (
        (local / "config.json").is_file() or (local / "adapter_config.json").is_file()
    ):
        raise UserError(
            f"reward.model_path={path}: not a model directory; fix: give a method=rm run's model/ directory"
        )
    try:
        if (local / "adapter_config.json").is_file():
            from peft import AutoPeftModelForSequenceClassification

            model = AutoPeftModelForSequenceClassification.from_pretrained(local, num_labels=1)
        else:
            model = AutoModelForSequenceClassification.from_pretrained(
                path, num_labels=1, use_safetensors=True
            )
        tokenizer = AutoTokenizer.from_pretrained(path)
    except OSError as e:
        raise UserError(
            f"reward.model_path={path}: cannot be loaded ({str(e).splitlines()[0][:120]}); fix: give a local directory"
        ) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    return model.eval(), tokenizer


def score(model, tokenizer, prompts: list, completions: list, template: str | None = None):
    """One score per prompt + completion from a sequence-classification model, in its chat format (a
    tokenizer without a chat template: through `template`, e.g. "{prompt}\n\n{answer}")."""
    import torch

    texts = [_chat_text(tokenizer, p, c, template) for p, c in zip(prompts, completions, strict=True)]
    batch = tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=1024).to(
        model.device
    )
    with torch.no_grad():
        return model(**batch).logits[:, 0].float()


def _chat_text(tokenizer, prompt: Any, completion: Any, template: str | None = None) -> str:
    if template is not None and not getattr(tokenizer, "chat_template", None):
        # a classifier trained on plain text (e.g. a DeBERTa reward model): the turns' text, in the template
        return template.format(prompt=text_of(prompt), answer=text_of(completion))
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    if isinstance(completion, str):
        completion = [{"role": "assistant", "content": completion}]
    return tokenizer.apply_chat_template(prompt + completion, tokenize=False)

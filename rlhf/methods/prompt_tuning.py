"""method=prompt-tuning: SFT of `num_virtual_tokens` soft-prompt embeddings; the model stays frozen."""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import MISSING

from rlhf.errors import Problems
from rlhf.methods import Inputs, Result, sft
from rlhf.schema import TrainingConfig

NAME = "prompt-tuning"
DATA_FORMATS = sft.DATA_FORMATS
HEAD = sft.HEAD
USES_REWARD = False
RESULTS = sft.RESULTS
SIGNALS = sft.SIGNALS


@dataclass
class Config(TrainingConfig):
    num_virtual_tokens: int = MISSING
    prompt_tuning_init_text: str = MISSING  # "" initialises the virtual tokens randomly


def validate(m: Config, p: Problems) -> None:
    p.positive("method.num_virtual_tokens", m.num_virtual_tokens, "20")


def adapter_kind(m: Config) -> str | None:
    return "prompt"


def adapter(m: Config, tokenizer_path: str):
    from peft import PromptTuningConfig, PromptTuningInit

    text = m.prompt_tuning_init_text
    return PromptTuningConfig(
        task_type="CAUSAL_LM",
        num_virtual_tokens=m.num_virtual_tokens,
        prompt_tuning_init=PromptTuningInit.TEXT if text else PromptTuningInit.RANDOM,
        prompt_tuning_init_text=text or None,
        tokenizer_name_or_path=tokenizer_path if text else None,
    )


def train(inputs: Inputs) -> Result:
    return sft.train(inputs, adapter=adapter(inputs.config, inputs.model.config._name_or_path))

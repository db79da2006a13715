"""method=prefix-tuning: SFT of `num_virtual_tokens` trained keys and values prepended at every layer's
attention (PEFT prefix tuning); the model stays frozen.

Unlike prompt tuning, which trains input embeddings only, the prefix reaches every layer through the key /
value cache, which is why it cannot run under gradient checkpointing (check_hardware refuses it).
"""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import MISSING

from rlhf.errors import Problems
from rlhf.methods import Inputs, Result, sft
from rlhf.schema import TrainingConfig

NAME = "prefix-tuning"
DATA_FORMATS = sft.DATA_FORMATS
HEAD = sft.HEAD
USES_REWARD = False
RESULTS = sft.RESULTS
SIGNALS = sft.SIGNALS


@dataclass
class Config(TrainingConfig):
    num_virtual_tokens: int = MISSING


def validate(m: Config, p: Problems) -> None:
    p.positive("method.num_virtual_tokens", m.num_virtual_tokens, "20")


def check_hardware(m: Config, hw, p: Problems) -> None:
    p.check(
        not hw.gradient_checkpointing,
        "hardware.gradient_checkpointing",
        hw.gradient_checkpointing,
        "prefix tuning fails under gradient checkpointing (the checkpointed layers drop the prefix's keys "
        "and values)",
        "hardware.gradient_checkpointing=false",
    )


def adapter_kind(m: Config) -> str | None:
    return "prefix"


def adapter(m: Config):
    from peft import PrefixTuningConfig

    return PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=m.num_virtual_tokens)


def train(inputs: Inputs) -> Result:
    return sft.train(inputs, adapter=adapter(inputs.config))

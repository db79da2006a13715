"""method=lora: SFT with a LoRA adapter (QLoRA when the hardware profile loads the base in 4-bit)."""

from __future__ import annotations

from dataclasses import dataclass

from rlhf.errors import Problems
from rlhf.methods import Inputs, Result, sft
from rlhf.methods._common import check_lora, lora_config
from rlhf.schema import LoraTrainingConfig

NAME = "lora"
DATA_FORMATS = sft.DATA_FORMATS
HEAD = sft.HEAD
USES_REWARD = False
RESULTS = sft.RESULTS
SIGNALS = sft.SIGNALS
PACKING = sft.PACKING


@dataclass
class Config(LoraTrainingConfig):
    pass


def validate(m: Config, p: Problems) -> None:
    check_lora(m, p)


def adapter_kind(m: Config) -> str | None:
    return "lora"


def train(inputs: Inputs) -> Result:
    return sft.train(inputs, adapter=lora_config(inputs.config))

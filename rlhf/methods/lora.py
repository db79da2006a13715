"""method=lora: SFT with a LoRA adapter (QLoRA when the hardware profile loads the base in 4-bit)."""

from __future__ import annotations

from omegaconf import OmegaConf

from rlhf.methods import Inputs, Result, sft

DATA_FORMATS = sft.DATA_FORMATS
BATCH = sft.BATCH
HEAD = sft.HEAD
USES_REWARD = False


def adapter(m, task_type: str = "CAUSAL_LM"):
    """The LoRA config of a method node with lora_r / lora_alpha / lora_dropout / target_modules."""
    from peft import LoraConfig

    target = (
        m.target_modules if isinstance(m.target_modules, str) else OmegaConf.to_container(m.target_modules)
    )
    return LoraConfig(
        r=m.lora_r,
        lora_alpha=m.lora_alpha,
        lora_dropout=m.lora_dropout,
        target_modules=target,
        task_type=task_type,  # SEQ_CLS also trains and saves the new score head
    )


def train(inputs: Inputs) -> Result:
    return sft.train(inputs, adapter=adapter(inputs.method))

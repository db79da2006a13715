"""method=prompt-tuning: SFT of `num_virtual_tokens` soft-prompt embeddings; the model stays frozen."""

from __future__ import annotations

from rlhf.methods import Inputs, Result, sft

DATA_FORMATS = sft.DATA_FORMATS
BATCH = sft.BATCH
HEAD = sft.HEAD
USES_REWARD = False


def adapter(m, tokenizer_path: str):
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
    return sft.train(inputs, adapter=adapter(inputs.method, inputs.model.config._name_or_path))

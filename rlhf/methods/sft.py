"""method=sft: supervised fine-tuning on TRL's SFTTrainer; every weight trains unless `adapter` is given.

lora.py and prompt_tuning.py call `train` with their PEFT config. The loss covers the completion (the
assistant's answer) only: TRL does that for prompt/completion rows.
"""

from __future__ import annotations

from typing import Any

from rlhf.methods import Inputs, Result, optimisation_args

DATA_FORMATS = ("alpaca", "chat", "question_decomposition")
BATCH = "sft"
HEAD = "causal-lm"
USES_REWARD = False


def train(inputs: Inputs, adapter: Any = None) -> Result:
    trainer = build_trainer(inputs, adapter)
    output = trainer.train()
    return Result(model=trainer.model, metrics=dict(output.metrics))


def build_trainer(inputs: Inputs, adapter: Any = None):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    m = inputs.method
    args = SFTConfig(
        **inputs.trainer_args,
        **optimisation_args(m),
        completion_only_loss=True,
    )
    return SFTTrainer(
        model=inputs.model,
        args=args,
        train_dataset=Dataset.from_list(inputs.rows),
        processing_class=inputs.tokenizer,
        peft_config=adapter,
        callbacks=inputs.callbacks,
    )

"""method=sft: supervised fine-tuning on TRL's SFTTrainer; every weight trains unless `adapter` is given.

lora.py and prompt_tuning.py call `train` with their PEFT config. The loss covers the completion (the
assistant's answer) only: TRL does that for prompt/completion rows.
"""

from __future__ import annotations

from typing import Any

from rlhf.methods import Inputs, Result

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
        learning_rate=m.learning_rate,
        num_train_epochs=m.num_epochs,
        max_steps=m.max_steps if m.max_steps > 0 else -1,
        lr_scheduler_type=m.lr_scheduler_type,
        warmup_steps=m.warmup_ratio,
        weight_decay=m.weight_decay,
        max_grad_norm=m.max_grad_norm,
        logging_steps=m.logging_steps,
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

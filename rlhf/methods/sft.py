"""method=sft: supervised fine-tuning on TRL's SFTTrainer; every weight trains.

lora.py and prompt_tuning.py call `train` with their PEFT config. The loss covers the completion (the
assistant's answer) only: TRL does that for prompt/completion rows. With held-out rows (data.eval_*) the
trainer reports their loss every method.eval_steps steps and at the end (`eval_loss`). With
data.packing=true, rows are packed into hardware.max_seq_length windows without padding (TRL's best-fit
packing, padding-free): each row's positions restart at 0, so attention stays within the row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rlhf.errors import Problems
from rlhf.methods import Inputs, Result
from rlhf.methods._common import (
    callbacks,
    eval_args,
    eval_dataset,
    final_eval,
    fit,
    library_checks,
    profile_batch,
    trainer_args,
)
from rlhf.schema import TrainingConfig

NAME = "sft"
DATA_FORMATS = ("alpaca", "chat", "question_decomposition", "sharegpt", "prompt_completion", "text")
HEAD = "causal-lm"
USES_REWARD = False
RESULTS: tuple[str, ...] = ("eval_loss",)
PACKING = True  # data.packing=true: the model sees position ids, which a PEFT soft prompt would shift
SIGNALS = {"grad_norm": "grad_norm", "loss": "loss", "eval_loss": "eval_loss"}  # for the monitor group


@dataclass
class Config(TrainingConfig):
    pass


def validate(m: Config, p: Problems) -> None:
    """TrainingConfig's rules are checked for every method; full fine-tuning adds none."""


def adapter_kind(m: Config) -> str | None:
    return None


def train(inputs: Inputs, adapter: Any = None) -> Result:
    trainer = build_trainer(inputs, adapter)
    output = fit(trainer, inputs)
    heldout = final_eval(trainer, inputs)
    return Result(
        model=trainer.model, metrics=dict(output.metrics), extra={"eval_loss": heldout.get("eval_loss")}
    )


def build_trainer(inputs: Inputs, adapter: Any = None):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    batch = profile_batch(inputs.hardware, "sft")
    with library_checks("TRL's SFTTrainer", inputs):
        args = SFTConfig(
            **trainer_args(inputs, batch),
            **eval_args(inputs, batch),
            completion_only_loss=True,
            packing=inputs.packing,
            packing_strategy="bfd",  # best fit: a row is never split across windows (bfd_split would)
        )
        return SFTTrainer(
            model=inputs.model,
            args=args,
            train_dataset=Dataset.from_list(inputs.rows),
            eval_dataset=eval_dataset(inputs),
            processing_class=inputs.tokenizer,
            peft_config=adapter,
            callbacks=callbacks(inputs),
        )

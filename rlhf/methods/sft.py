"""method=sft: supervised fine-tuning on TRL's SFTTrainer; every weight trains.

lora.py and prompt_tuning.py call `train` with their PEFT config. The loss covers the completion (the
assistant's answer) only: TRL does that for prompt/completion rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rlhf.errors import Problems
from rlhf.methods import Inputs, Result
from rlhf.methods._common import callbacks, fit, library_checks, profile_batch, trainer_args
from rlhf.schema import TrainingConfig

NAME = "sft"
DATA_FORMATS = ("alpaca", "chat", "question_decomposition", "sharegpt", "prompt_completion", "text")
HEAD = "causal-lm"
USES_REWARD = False
RESULTS: tuple[str, ...] = ()


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
    return Result(model=trainer.model, metrics=dict(output.metrics))


def build_trainer(inputs: Inputs, adapter: Any = None):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    with library_checks("TRL's SFTTrainer", inputs):
        args = SFTConfig(
            **trainer_args(inputs, profile_batch(inputs.hardware, "sft")), completion_only_loss=True
        )
        return SFTTrainer(
            model=inputs.model,
            args=args,
            train_dataset=Dataset.from_list(inputs.rows),
            processing_class=inputs.tokenizer,
            peft_config=adapter,
            callbacks=callbacks(inputs),
        )

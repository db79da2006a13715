"""method=rm: a reward model trained on preference pairs (prompt / chosen / rejected) with TRL's RewardTrainer.

The model is the base with a one-output sequence-classification head; a LoRA adapter trains (the head
too) unless method.adapter=none. The summary reports pairwise accuracy on the held-out rows: the share of
pairs whose chosen answer scores higher than the rejected one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rlhf.errors import Problems
from rlhf.methods import Inputs, Result
from rlhf.methods._common import (
    callbacks,
    check_adapter_choice,
    fit,
    library_checks,
    lora_config,
    profile_batch,
    trainer_args,
)
from rlhf.schema import OptionalLoraConfig

NAME = "rm"
DATA_FORMATS = ("preference", "implicit_preference")
HEAD = "sequence-classification"
USES_REWARD = False
RESULTS = ("heldout_pairwise_accuracy",)
SIGNALS = {"grad_norm": "grad_norm", "preference_accuracy": "accuracy", "reward_margin": "margin"}


@dataclass
class Config(OptionalLoraConfig):
    pass


def validate(m: Config, p: Problems) -> None:
    check_adapter_choice(m, p)


def adapter_kind(m: Config) -> str | None:
    return "lora" if m.adapter == "lora" else None


def train(inputs: Inputs) -> Result:
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    m = inputs.config
    with library_checks("TRL's RewardTrainer", inputs):
        args = RewardConfig(**trainer_args(inputs, profile_batch(inputs.hardware, "pref")))
        trainer = RewardTrainer(
            model=inputs.model,
            args=args,
            train_dataset=Dataset.from_list(inputs.rows),
            processing_class=inputs.tokenizer,
            peft_config=lora_config(m, task_type="SEQ_CLS") if m.adapter == "lora" else None,
            callbacks=callbacks(inputs),
        )
    output = fit(trainer, inputs)
    extra = {
        "heldout_pairwise_accuracy": pairwise_accuracy(trainer.model, inputs.tokenizer, inputs.eval_rows)
    }
    return Result(model=trainer.model, metrics=dict(output.metrics), extra=extra)


def pairwise_accuracy(model, tokenizer, rows: list[dict[str, Any]], batch_size: int = 8) -> float | None:
    """Share of pairs where score(prompt + chosen) > score(prompt + rejected)."""
    from rlhf import rewards

    if not rows:
        return None
    model.eval()
    wins = 0
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        prompts = [r["prompt"] for r in chunk]
        chosen = rewards.score(model, tokenizer, prompts, [r["chosen"] for r in chunk])
        rejected = rewards.score(model, tokenizer, prompts, [r["rejected"] for r in chunk])
        wins += int((chosen > rejected).sum())
    return wins / len(rows)

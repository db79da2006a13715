"""method=rm: a reward model trained on preference pairs (prompt / chosen / rejected) with TRL's RewardTrainer.

The model is the base with a one-output sequence-classification head; a LoRA adapter trains (the head
too) unless method.adapter=none. The summary reports pairwise accuracy on the held-out rows: the share of
pairs whose chosen answer scores higher than the rejected one.
"""

from __future__ import annotations

from typing import Any

from rlhf import rewards
from rlhf.methods import Inputs, Result, lora, optimisation_args

DATA_FORMATS = ("preference",)
BATCH = "pref"
HEAD = "sequence-classification"
USES_REWARD = False


def train(inputs: Inputs) -> Result:
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    m = inputs.method
    args = RewardConfig(
        **inputs.trainer_args,
        **optimisation_args(m),
    )
    trainer = RewardTrainer(
        model=inputs.model,
        args=args,
        train_dataset=Dataset.from_list(inputs.rows),
        processing_class=inputs.tokenizer,
        peft_config=lora.adapter(m, task_type="SEQ_CLS") if m.adapter == "lora" else None,
        callbacks=inputs.callbacks,
    )
    output = trainer.train()
    extra = {
        "heldout_pairwise_accuracy": pairwise_accuracy(trainer.model, inputs.tokenizer, inputs.eval_rows)
    }
    return Result(model=trainer.model, metrics=dict(output.metrics), extra=extra)


def pairwise_accuracy(model, tokenizer, rows: list[dict[str, Any]], batch_size: int = 8) -> float | None:
    """Share of pairs where score(prompt + chosen) > score(prompt + rejected)."""
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

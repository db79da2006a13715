"""Training methods: one module per `method=` option, each a thin wiring of a trainer.

A method module exposes `DATA_FORMATS` (the data it trains on), `BATCH` (which of the hardware profile's
batch settings it uses: sft or pref), `HEAD` (causal-lm, or sequence-classification for a reward model),
`USES_REWARD` (whether it needs the reward group's callables) and `train(inputs) -> Result`. It receives ready objects and never
reads config paths, writes the run directory or talks to a tracker. TRL, peft and datasets are imported
inside `train`: looking a method up costs no more than torch.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

MODULES = {
    "sft": "sft",
    "lora": "lora",
    "prompt-tuning": "prompt_tuning",
    "rm": "rm",
    "dpo": "dpo",
    "grpo": "grpo",
    "ppo": "ppo",
}


# what the preference and RL methods add to summary.json (Result.extra), shown in the run's table and in
# `python -m rlhf.compare` when present
METHOD_RESULTS = (
    "heldout_pairwise_accuracy",
    "reward_margin",
    "preference_accuracy",
    "final_reward_mean",
    "final_reward",
    "final_success_rate",
    "final_kl",
)


@dataclass
class Inputs:
    model: Any  # a transformers PreTrainedModel
    tokenizer: Any
    rows: list[dict[str, Any]]  # converted by rlhf.data: prompt / completion messages
    method: Any  # the method's config node (learning rate, adapter settings, ...)
    trainer_args: dict[str, Any]  # hardware profile + run settings, ready for the trainer's config class
    callbacks: list[Any] = field(default_factory=list)
    eval_rows: list[dict[str, Any]] = field(default_factory=list)  # held-out rows, where the method uses them
    rewards: list[Any] = field(default_factory=list)  # rlhf.rewards.Reward components (ppo, grpo)


@dataclass
class Result:
    model: Any  # the trained model (a PeftModel for adapter methods)
    metrics: dict[str, float]  # final training metrics: train_loss, train_runtime, num_tokens, ...
    extra: dict[str, Any] = field(default_factory=dict)  # method-specific results for summary.json


def optimisation_args(m: Any) -> dict[str, Any]:
    """The TRL / transformers config fields that every method's shared keys (TrainingConfig) map to."""
    return {
        "learning_rate": m.learning_rate,
        "num_train_epochs": m.num_epochs,
        "max_steps": m.max_steps if m.max_steps > 0 else -1,
        "lr_scheduler_type": m.lr_scheduler_type,
        "warmup_steps": m.warmup_ratio,  # transformers 5: a float below 1 is a fraction of the steps
        "weight_decay": m.weight_decay,
        "max_grad_norm": m.max_grad_norm,
        "logging_steps": m.logging_steps,
    }


def get(name: str) -> ModuleType:
    return importlib.import_module(f"rlhf.methods.{MODULES[name]}")

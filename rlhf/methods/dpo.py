"""method=dpo: direct preference optimisation on TRL's DPOTrainer.

With a LoRA adapter (the default) the reference model is the base with the adapter disabled: no second copy
in memory. Full fine-tuning (method.adapter=none) gets an explicit frozen copy as the reference
(_common.frozen_copy). The summary reports the final reward margin and preference accuracy that DPO logs.
"""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import MISSING

from rlhf.errors import Problems
from rlhf.methods import Inputs, Result
from rlhf.methods._common import (
    callbacks,
    check_adapter_choice,
    eval_args,
    eval_dataset,
    field_choices,
    final_eval,
    fit,
    frozen_copy,
    last_logged,
    library_checks,
    lora_config,
    profile_batch,
    trainer_args,
)
from rlhf.schema import OptionalLoraConfig

NAME = "dpo"
DATA_FORMATS = ("preference", "implicit_preference")
HEAD = "causal-lm"
USES_REWARD = False
RESULTS = ("reward_margin", "preference_accuracy", "heldout_preference_accuracy", "heldout_reward_margin")
SIGNALS = {  # monitor signal -> the key TRL's DPOTrainer logs
    "grad_norm": "grad_norm",
    "reward_margin": "rewards/margins",
    "preference_accuracy": "rewards/accuracies",
    "chosen_logp": "logps/chosen",
}


@dataclass
class Config(OptionalLoraConfig):
    beta: float = MISSING
    loss_type: str = MISSING  # one of TRL's DPO loss types (checked against TRL before weights load)


def validate(m: Config, p: Problems) -> None:
    check_adapter_choice(m, p)
    p.check(m.beta >= 0, "method.beta", m.beta, "must be >= 0", "use e.g. beta=0.1")


def library_choices(m: Config) -> dict[str, list[str]]:
    """Keys whose valid values TRL owns (checked before any weights load)."""
    from trl import DPOConfig

    return {"loss_type": field_choices(DPOConfig, "loss_type")}


def adapter_kind(m: Config) -> str | None:
    return "lora" if m.adapter == "lora" else None


def train(inputs: Inputs) -> Result:
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    m = inputs.config
    use_lora = m.adapter == "lora"
    with library_checks("TRL's DPOTrainer", inputs):
        args = DPOConfig(
            **trainer_args(inputs, profile_batch(inputs.hardware, "pref")),
            **eval_args(inputs, profile_batch(inputs.hardware, "pref")),
            beta=m.beta,
            loss_type=[m.loss_type],
        )
        trainer = DPOTrainer(
            model=inputs.model,
            ref_model=None if use_lora else frozen_copy(inputs.model),
            args=args,
            train_dataset=Dataset.from_list(inputs.rows),
            eval_dataset=eval_dataset(inputs),
            processing_class=inputs.tokenizer,
            peft_config=lora_config(m) if use_lora else None,
            callbacks=callbacks(inputs),
        )
    output = fit(trainer, inputs)
    heldout = final_eval(trainer, inputs)
    extra = {
        "reward_margin": last_logged(trainer, "rewards/margins"),
        "preference_accuracy": last_logged(trainer, "rewards/accuracies"),
        "heldout_preference_accuracy": heldout.get("eval_rewards/accuracies"),
        "heldout_reward_margin": heldout.get("eval_rewards/margins"),
    }
    return Result(model=trainer.model, metrics=dict(output.metrics), extra=extra)

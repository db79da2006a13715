"""method=kto: Kahneman-Tversky optimisation on TRL's KTOTrainer, from unpaired desirable / undesirable rows.

Each row is one completion labelled good or bad; no pairs are needed. With a LoRA adapter (the default) the
reference is the base with the adapter disabled; full fine-tuning (method.adapter=none) gets a frozen copy,
as in dpo. The loss "kto" estimates its KL term from mismatched prompt/completion pairs inside a batch, so
it needs a per-device batch > 1 (check_hardware). The summary reports the final reward margin
(desirable minus undesirable implied reward) and that KL estimate.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from omegaconf import MISSING

from rlhf.errors import Problems
from rlhf.methods import Inputs, Result
from rlhf.methods._common import (
    callbacks,
    check_adapter_choice,
    eval_args,
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

NAME = "kto"
DATA_FORMATS = ("unpaired",)
HEAD = "causal-lm"
USES_REWARD = False
RESULTS = ("reward_margin", "final_kl", "heldout_reward_margin")
SIGNALS = {  # monitor signal -> the key TRL's KTOTrainer logs
    "grad_norm": "grad_norm",
    "reward_margin": "rewards/margins",
    "chosen_logp": "logps/chosen",
    "kl": "kl",
}


@dataclass
class Config(OptionalLoraConfig):
    beta: float = MISSING
    loss_type: str = MISSING  # one of TRL's KTO loss types (checked against TRL before weights load)
    desirable_weight: float = MISSING  # scales the loss of desirable rows (raise it when they are fewer)
    undesirable_weight: float = MISSING


def validate(m: Config, p: Problems) -> None:
    check_adapter_choice(m, p)
    p.check(m.beta >= 0, "method.beta", m.beta, "must be >= 0", "use e.g. beta=0.1")
    p.positive("method.desirable_weight", m.desirable_weight, "1.0")
    p.positive("method.undesirable_weight", m.undesirable_weight, "1.0")


def library_choices(m: Config) -> dict[str, list[str]]:
    """Keys whose valid values TRL owns: KTOConfig declares its loss types in the field's metadata."""
    from trl import KTOConfig

    return {"loss_type": field_choices(KTOConfig, "loss_type")}


def check_hardware(m: Config, hw, p: Problems) -> None:
    """KTO's loss compares the rows of one batch (its KL term): a per-device batch of 1 has nothing to compare."""
    p.check(
        not (m.loss_type == "kto" and hw.pref_batch_size <= 1),
        "hardware.pref_batch_size",
        hw.pref_batch_size,
        "method=kto's loss kto needs a per-device batch > 1 (its KL term compares rows of one batch)",
        "hardware.pref_batch_size=2 (halve hardware.pref_grad_accum to keep the effective batch), "
        "or method.loss_type=apo_zero_unpaired",
    )


def adapter_kind(m: Config) -> str | None:
    return "lora" if m.adapter == "lora" else None


def train(inputs: Inputs) -> Result:
    from datasets import Dataset
    from trl import KTOConfig, KTOTrainer

    m = inputs.config
    use_lora = m.adapter == "lora"
    with library_checks("TRL's KTOTrainer", inputs):
        args = KTOConfig(
            **trainer_args(inputs, profile_batch(inputs.hardware, "pref")),
            **eval_args(inputs, profile_batch(inputs.hardware, "pref")),
            beta=m.beta,
            loss_type=m.loss_type,
            desirable_weight=m.desirable_weight,
            undesirable_weight=m.undesirable_weight,
        )
        trainer = KTOTrainer(
            model=inputs.model,
            ref_model=None if use_lora else frozen_copy(inputs.model),
            args=args,
            train_dataset=Dataset.from_list(interleaved(inputs.rows)),
            eval_dataset=Dataset.from_list(interleaved(inputs.eval_rows)) if inputs.eval_rows else None,
            processing_class=inputs.tokenizer,
            peft_config=lora_config(m) if use_lora else None,
            callbacks=callbacks(inputs),
        )
    output = fit(trainer, inputs)
    heldout = final_eval(trainer, inputs)
    extra = {
        "reward_margin": last_logged(trainer, "rewards/margins"),
        "final_kl": last_logged(trainer, "kl"),
        "heldout_reward_margin": heldout.get("eval_rewards/margins"),
    }
    return Result(model=trainer.model, metrics=dict(output.metrics), extra=extra)


def interleaved(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Desirable and undesirable rows alternating, each kind in its file order. KTO's batches are taken in
    order, and a batch holding one kind only logs no margin and skews the KL estimate."""
    good = [r for r in rows if r["label"]]
    bad = [r for r in rows if not r["label"]]
    return [r for pair in itertools.zip_longest(good, bad) for r in pair if r is not None]

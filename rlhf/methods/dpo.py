"""method=dpo: direct preference optimisation on TRL's DPOTrainer.

With a LoRA adapter (the default) the reference model is the base with the adapter disabled: no second copy
in memory. Full fine-tuning (method.adapter=none) gets an explicit frozen copy as the reference: TRL's own
fallback reloads it from `config._name_or_path`, which breaks for models built in memory or converted from
GGUF. The summary reports the final reward margin and preference accuracy that DPO logs.
"""

from __future__ import annotations

import copy

from rlhf.methods import Inputs, Result, lora

DATA_FORMATS = ("preference",)
BATCH = "pref"
HEAD = "causal-lm"
USES_REWARD = False


def train(inputs: Inputs) -> Result:
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    m = inputs.method
    args = DPOConfig(
        **inputs.trainer_args,
        learning_rate=m.learning_rate,
        num_train_epochs=m.num_epochs,
        max_steps=m.max_steps if m.max_steps > 0 else -1,
        lr_scheduler_type=m.lr_scheduler_type,
        warmup_steps=m.warmup_ratio,
        weight_decay=m.weight_decay,
        max_grad_norm=m.max_grad_norm,
        logging_steps=m.logging_steps,
        beta=m.beta,
        loss_type=[m.loss_type],
    )
    use_lora = m.adapter == "lora"
    trainer = DPOTrainer(
        model=inputs.model,
        ref_model=None if use_lora else frozen_copy(inputs.model),
        args=args,
        train_dataset=Dataset.from_list(inputs.rows),
        processing_class=inputs.tokenizer,
        peft_config=lora.adapter(m) if use_lora else None,
        callbacks=inputs.callbacks,
    )
    output = trainer.train()
    logged = [h for h in trainer.state.log_history if "rewards/margins" in h]
    extra = {
        "reward_margin": logged[-1]["rewards/margins"] if logged else None,
        "preference_accuracy": logged[-1]["rewards/accuracies"] if logged else None,
    }
    return Result(model=trainer.model, metrics=dict(output.metrics), extra=extra)


def frozen_copy(model):
    ref = copy.deepcopy(model).eval()
    ref.requires_grad_(False)
    return ref

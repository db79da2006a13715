"""method=dpo: direct preference optimisation on TRL's DPOTrainer.

With a LoRA adapter (the default) the reference model is the base with the adapter disabled: no second copy
in memory. Full fine-tuning (method.adapter=none) gets an explicit frozen copy as the reference: TRL's own
fallback reloads it from `config._name_or_path`, which breaks for models built in memory or converted from
GGUF. The summary reports the final reward margin and preference accuracy that DPO logs.
"""

from __future__ import annotations

import copy

from rlhf.methods import Inputs, Result, lora, optimisation_args

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
        **optimisation_args(m),
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

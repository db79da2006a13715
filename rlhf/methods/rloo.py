"""method=rloo: REINFORCE leave-one-out on TRL's RLOOTrainer, rewards from the reward group.

Each step samples `num_generations` completions for each of `prompts_per_step` prompts and scores them with
the reward components (summed with their weights). A completion's baseline is the mean reward of the other
completions of its prompt, so no value model is needed. `beta` > 0 subtracts a KL penalty to the reference
(the base with the adapter disabled) from the reward. TRL 1.16's RLOO has one loss (no loss_type). The batch
is the algorithm's, as in GRPO: prompts_per_step x num_generations completions, no accumulation.
"""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import MISSING

from rlhf.errors import Problems
from rlhf.methods import Inputs, Result
from rlhf.methods._common import (
    callbacks,
    check_group,
    check_lora,
    check_sampling,
    fit,
    heldout_reward,
    last_logged,
    library_checks,
    lora_config,
    trainer_args,
)
from rlhf.schema import LoraTrainingConfig, SamplingFields

NAME = "rloo"
DATA_FORMATS = ("prompts",)
HEAD = "causal-lm"
USES_REWARD = True
RESULTS = ("final_reward_mean", "heldout_reward_mean")
SIGNALS = {  # monitor signal -> the key TRL's RLOOTrainer logs (kl only with method.beta > 0)
    "grad_norm": "grad_norm",
    "kl": "kl",
    "entropy": "entropy",
    "response_length": "completions/mean_length",
    "truncated_share": "completions/clipped_ratio",
    "reward_mean": "reward",
    "reward_std": "reward_std",
    "reward/*": "rewards/{}/mean",
    "zero_std_share": "frac_reward_zero_std",
    "clip_fraction": "clip_ratio/region_mean",
}


@dataclass
class Config(LoraTrainingConfig, SamplingFields):
    beta: float = MISSING  # KL penalty coefficient, applied to the reward; 0 computes no reference at all
    num_generations: int = MISSING  # completions per prompt: each one's baseline is the others' mean
    prompts_per_step: int = MISSING


def validate(m: Config, p: Problems) -> None:
    check_lora(m, p)
    check_sampling(m, p)
    p.check(m.beta >= 0, "method.beta", m.beta, "must be >= 0", "use e.g. beta=0.05")
    check_group(m, p)


def adapter_kind(m: Config) -> str | None:
    return "lora"


def train(inputs: Inputs) -> Result:
    from datasets import Dataset
    from trl import RLOOConfig, RLOOTrainer

    m = inputs.config
    with library_checks("TRL's RLOOTrainer", inputs):
        args = RLOOConfig(
            **trainer_args(inputs, (m.prompts_per_step * m.num_generations, 1), max_length=None),
            beta=m.beta,
            num_generations=m.num_generations,
            max_completion_length=m.max_new_tokens,
            temperature=m.temperature,
            top_k=m.top_k,
            top_p=m.top_p,
            reward_weights=[r.weight for r in inputs.rewards],
        )
        trainer = RLOOTrainer(
            model=inputs.model,
            reward_funcs=[r.func for r in inputs.rewards],
            args=args,
            train_dataset=Dataset.from_list(inputs.rows),
            processing_class=inputs.tokenizer,
            peft_config=lora_config(m),  # the reference is this adapter disabled: no second model
            callbacks=callbacks(inputs),
        )
    output = fit(trainer, inputs)
    return Result(
        model=trainer.model,
        metrics=dict(output.metrics),
        extra={
            "final_reward_mean": last_logged(trainer, "reward"),
            "heldout_reward_mean": heldout_reward(inputs, trainer.model),
        },  # weighted sum, without the KL term
    )

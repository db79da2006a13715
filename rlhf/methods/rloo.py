"""method=rloo: REINFORCE leave-one-out on TRL's RLOOTrainer, rewards from the reward group.

Each step samples `num_generations` completions for each of `prompts_per_step` prompts and scores them with
the reward components (summed with their weights). A completion's baseline is the mean reward of the other
completions of its prompt, so no value model is needed. `beta` > 0 subtracts a KL penalty to the reference
(the base with the adapter disabled) from the reward. TRL 1.16's RLOO has one loss (no loss_type);
its num_iterations, epsilon / epsilon_high clip and mask_truncated_completions are GRPO's. The batch
is the algorithm's, as in GRPO: prompts_per_step x num_generations completions, no accumulation.
"""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import MISSING

from rlhf.errors import Problems
from rlhf.methods import Inputs, Result
from rlhf.methods._common import (
    GROUP_POLICY_SIGNALS,
    check_group,
    check_lora,
    check_sampling,
    fit,
    group_policy_args,
    group_policy_result,
    group_policy_trainer,
    library_checks,
)
from rlhf.schema import GroupPolicyFields, LoraTrainingConfig, SamplingFields

NAME = "rloo"
DATA_FORMATS = ("prompts",)
HEAD = "causal-lm"
USES_REWARD = True
RESULTS = ("final_reward_mean", "heldout_reward_mean")
SIGNALS = GROUP_POLICY_SIGNALS


@dataclass
class Config(LoraTrainingConfig, SamplingFields, GroupPolicyFields):
    # beta > 0: a KL penalty to the reference subtracted from the reward; 0 computes no reference at all
    normalize_advantages: bool = MISSING  # advantages scaled to unit std over the generation batch


def validate(m: Config, p: Problems) -> None:
    check_lora(m, p)
    check_sampling(m, p)
    check_group(m, p)


def adapter_kind(m: Config) -> str | None:
    return "lora"


def train(inputs: Inputs) -> Result:
    from trl import RLOOConfig, RLOOTrainer

    m = inputs.config
    with library_checks("TRL's RLOOTrainer", inputs):
        args = RLOOConfig(**group_policy_args(inputs), normalize_advantages=m.normalize_advantages)
        trainer = group_policy_trainer(RLOOTrainer, args, inputs)
    return group_policy_result(trainer, fit(trainer, inputs), inputs)

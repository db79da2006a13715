"""method=grpo: group relative policy optimisation on TRL's GRPOTrainer, rewards from the reward group.

Each step samples `num_generations` completions for each of `prompts_per_step` prompts, scores them with
the reward components (summed with their weights, each logged on its own as rewards/<name>/mean) and
normalises the rewards within each prompt's group. The batch is the algorithm's, not the hardware
profile's: per_device_train_batch_size = prompts_per_step x num_generations, no accumulation.
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
    field_choices,
    fit,
    group_policy_args,
    group_policy_result,
    group_policy_trainer,
    library_checks,
)
from rlhf.schema import GroupPolicyFields, LoraTrainingConfig, SamplingFields

NAME = "grpo"
DATA_FORMATS = ("prompts",)
HEAD = "causal-lm"
USES_REWARD = True
RESULTS = ("final_reward_mean", "heldout_reward_mean")
SIGNALS = GROUP_POLICY_SIGNALS


@dataclass
class Config(LoraTrainingConfig, SamplingFields, GroupPolicyFields):
    loss_type: str = MISSING  # TRL's GRPO loss types (grpo, dr_grpo, dapo, bnpo, ...), checked against TRL
    scale_rewards: str = MISSING  # group | batch | none: what the rewards' std is taken over


SCALE_REWARDS = ("group", "batch", "none")  # TRL 1.16's help text lists these, not in a form one can read


def validate(m: Config, p: Problems) -> None:
    check_lora(m, p)
    check_sampling(m, p)
    check_group(m, p)
    p.one_of("method.scale_rewards", m.scale_rewards, SCALE_REWARDS)


def library_choices(m: Config) -> dict[str, list[str]]:
    from trl import GRPOConfig

    return {"loss_type": field_choices(GRPOConfig, "loss_type")}


def adapter_kind(m: Config) -> str | None:
    return "lora"


def train(inputs: Inputs) -> Result:
    from trl import GRPOConfig, GRPOTrainer

    m = inputs.config
    with library_checks("TRL's GRPOTrainer", inputs):
        args = GRPOConfig(**group_policy_args(inputs), loss_type=m.loss_type, scale_rewards=m.scale_rewards)
        trainer = group_policy_trainer(GRPOTrainer, args, inputs)
    return group_policy_result(trainer, fit(trainer, inputs), inputs)

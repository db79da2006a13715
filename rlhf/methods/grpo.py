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
    callbacks,
    check_group,
    check_lora,
    check_sampling,
    field_choices,
    fit,
    heldout_reward,
    last_logged,
    library_checks,
    lora_config,
    trainer_args,
)
from rlhf.schema import LoraTrainingConfig, SamplingFields

NAME = "grpo"
DATA_FORMATS = ("prompts",)
HEAD = "causal-lm"
USES_REWARD = True
RESULTS = ("final_reward_mean", "heldout_reward_mean")
SIGNALS = {  # monitor signal -> the key TRL's GRPOTrainer logs (kl only with method.beta > 0)
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
    beta: float = MISSING  # KL coefficient to the reference (the base with the adapter disabled)
    num_generations: int = MISSING  # completions per prompt; the group the advantages are computed in
    prompts_per_step: int = MISSING
    loss_type: str = MISSING  # TRL's GRPO loss types (grpo, dr_grpo, dapo, bnpo, ...), checked against TRL
    num_iterations: int = MISSING  # policy updates per generation (the mu of the GRPO paper)
    epsilon: float = MISSING  # the ratio's lower clip
    epsilon_high: float | None = MISSING  # its upper clip (DAPO: 0.28); null: epsilon
    scale_rewards: str = MISSING  # group | batch | none: what the rewards' std is taken over
    mask_truncated_completions: bool = MISSING  # completions cut at max_new_tokens get no loss (DAPO)


SCALE_REWARDS = ("group", "batch", "none")  # TRL 1.16's help text lists these, not in a form one can read


def validate(m: Config, p: Problems) -> None:
    check_lora(m, p)
    check_sampling(m, p)
    p.check(m.beta >= 0, "method.beta", m.beta, "must be >= 0", "use e.g. beta=0.04")
    check_group(m, p)
    p.positive("method.num_iterations", m.num_iterations, "1")
    p.positive("method.epsilon", m.epsilon, "0.2")
    p.check(
        m.epsilon_high is None or m.epsilon_high >= m.epsilon,
        "method.epsilon_high",
        m.epsilon_high,
        f"must be >= method.epsilon={m.epsilon}",
        "use null (= epsilon) or e.g. 0.28",
    )
    p.one_of("method.scale_rewards", m.scale_rewards, SCALE_REWARDS)


def library_choices(m: Config) -> dict[str, list[str]]:
    from trl import GRPOConfig

    return {"loss_type": field_choices(GRPOConfig, "loss_type")}


def adapter_kind(m: Config) -> str | None:
    return "lora"


def train(inputs: Inputs) -> Result:
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    m = inputs.config
    if inputs.checkpoints is not None:  # generations are reused for num_iterations steps: save between them
        inputs.checkpoints.boundary = m.num_iterations
    with library_checks("TRL's GRPOTrainer", inputs):
        args = GRPOConfig(
            **trainer_args(inputs, (m.prompts_per_step * m.num_generations, 1), max_length=None),
            beta=m.beta,
            loss_type=m.loss_type,
            num_iterations=m.num_iterations,
            epsilon=m.epsilon,
            epsilon_high=m.epsilon_high,
            scale_rewards=m.scale_rewards,
            mask_truncated_completions=m.mask_truncated_completions,
            num_generations=m.num_generations,
            max_completion_length=m.max_new_tokens,
            temperature=m.temperature,
            top_k=m.top_k,
            top_p=m.top_p,
            reward_weights=[r.weight for r in inputs.rewards],
        )
        trainer = GRPOTrainer(
            model=inputs.model,
            reward_funcs=[r.func for r in inputs.rewards],
            args=args,
            train_dataset=Dataset.from_list(inputs.rows),
            processing_class=inputs.tokenizer,
            peft_config=lora_config(m),
            callbacks=callbacks(inputs),
        )
    output = fit(trainer, inputs)
    return Result(
        model=trainer.model,
        metrics=dict(output.metrics),
        extra={
            "final_reward_mean": last_logged(trainer, "reward"),
            "heldout_reward_mean": heldout_reward(inputs, trainer.model),
        },
    )

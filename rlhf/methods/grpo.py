"""method=grpo: group relative policy optimisation on TRL's GRPOTrainer, rewards from the reward group.

Each step samples `num_generations` completions for each of `prompts_per_step` prompts, scores them with
the reward components (summed with their weights, each logged on its own as rewards/<name>/mean) and
normalises the rewards within each prompt's group. The batch is the algorithm's, not the hardware
profile's: per_device_train_batch_size = prompts_per_step x num_generations, no accumulation.
"""

from __future__ import annotations

from rlhf.methods import Inputs, Result, lora, optimisation_args

DATA_FORMATS = ("prompts",)
BATCH = "sft"
HEAD = "causal-lm"
USES_REWARD = True


def train(inputs: Inputs) -> Result:
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    m = inputs.method
    profile_args = {k: v for k, v in inputs.trainer_args.items() if k != "max_length"}
    args = GRPOConfig(
        **{
            **profile_args,
            "per_device_train_batch_size": m.prompts_per_step * m.num_generations,
            "gradient_accumulation_steps": 1,
        },
        **optimisation_args(m),
        beta=m.beta,
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
        peft_config=lora.adapter(m),
        callbacks=inputs.callbacks,
    )
    output = trainer.train()
    logged = [h for h in trainer.state.log_history if "reward" in h]
    return Result(
        model=trainer.model,
        metrics=dict(output.metrics),
        extra={"final_reward_mean": logged[-1]["reward"] if logged else None},
    )

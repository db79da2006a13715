"""method=ppo: our own compact actor-critic PPO on transformers + peft + accelerate (TRL removed its PPOTrainer).

One step (a rollout):
1. sample `batch_size` completions for prompts from the data set (temperature / top-k / top-p);
2. score them with the reward group's callables (the same ones `method=grpo` uses);
3. one forward pass of the policy gives old log-probs and values; one with the LoRA adapter disabled gives the
   reference log-probs: the reference is the base model itself, no second copy in memory;
4. per-token reward = -kl_coef x KL estimate, plus the score on the last token; GAE gives advantages and
   returns; advantages are whitened;
5. `ppo_epochs` passes over the rollout in mini-batches of `mini_batch_size`, accumulating
   `gradient_accumulation_steps` of them per optimizer step, on the clipped policy loss plus vf_coef x the
   clipped value loss.

The critic is a value head (one linear layer) on the policy's last hidden state, sharing its trunk and LoRA
adapter: as in the seeds' actor-critic, and it costs one extra matrix instead of a second model.
The arithmetic lives in core.py.
"""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import MISSING

from rlhf.errors import Problems
from rlhf.methods import Inputs, Result
from rlhf.methods._common import check_lora, check_sampling
from rlhf.schema import LoraTrainingConfig, SamplingFields

NAME = "ppo"
DATA_FORMATS = ("prompts",)
HEAD = "causal-lm"
USES_REWARD = True
# the hardware.optim values our loop builds (loop.make_optimizer); TRL's trainers build every transformers name
OPTIMIZERS = (
    "adamw_torch_fused",
    "adamw_torch",
    "sgd",
    "adafactor",
    "adamw_bnb_8bit",
    "adamw_8bit",
    "paged_adamw_32bit",
    "paged_adamw_8bit",
)
# a frozen base in bf16 where the CPU computes bf16 (the cpu profile's model_dtype auto), as every LoRA method:
# experiment=ppo-positive on a 2-core AMX CPU took 4.6 s/rollout and a 1.74 GB training peak on a bf16 base,
# against 5.7 s and 2.39 GB on a float32 one, and with the zero-initialised critic it learned as well (seeds 1
# and 42: 10/10 at rollouts 6 and 8). It had been kept float32 while a randomly initialised critic made
# learning depend on the seed (2 of 4 bf16 runs then ended at 0.3-0.4)
BASE_16BIT = True
RESULTS = ("final_reward", "final_success_rate", "final_kl", "heldout_reward_mean")
SIGNALS = {  # monitor signal -> the key the loop logs (loop.make_rollout, loop.optimise)
    "grad_norm": "grad_norm",
    "kl": "kl",
    "entropy": "entropy",
    "response_length": "response_length",
    "truncated_share": "response_truncated_share",
    "reward_mean": "reward",
    "reward_std": "reward_std",
    "reward/*": "rewards/{}",
    "clip_fraction": "clipfrac",
    "approx_kl": "approx_kl",
    "explained_variance": "explained_variance",
    "zero_std_share": "equal_scores",  # the rollout is ppo's one group
}


@dataclass
class Config(LoraTrainingConfig, SamplingFields):
    batch_size: int = MISSING  # completions per rollout (seed 000: 10)
    mini_batch_size: int = MISSING  # completions per forward/backward pass
    gradient_accumulation_steps: int = MISSING  # mini-batches per optimizer step
    ppo_epochs: int = MISSING  # passes over each rollout
    init_kl_coef: float = MISSING
    adaptive_kl: bool = MISSING  # adapt the KL coefficient towards target_kl (Ziegler et al. 2019)
    target_kl: float = MISSING
    kl_horizon: int = MISSING
    gamma: float = MISSING
    lam: float = MISSING
    cliprange: float = MISSING
    cliprange_value: float = MISSING
    vf_coef: float = MISSING
    whiten_advantages: bool = MISSING
    # a rollout whose scores are all equal has no learning signal: its advantages are zeroed (the policy is
    # not moved by the value head's errors and the KL term alone, whitened to full size); the value head
    # still learns from it. GRPO's zero-std groups get the same treatment.
    skip_equal_scores: bool = MISSING
    # the attention kernel of the PPO epochs and of the policy and reference passes they are compared with
    # ("": model.attn_implementation, which sampling always uses)
    update_attn_implementation: str = MISSING


def validate(m: Config, p: Problems) -> None:
    check_lora(m, p)
    check_sampling(m, p)
    for key in ("batch_size", "mini_batch_size", "gradient_accumulation_steps", "ppo_epochs", "kl_horizon"):
        p.positive(f"method.{key}", getattr(m, key), "4")
    if m.mini_batch_size > 0:
        p.check(
            m.batch_size % m.mini_batch_size == 0,
            "method.mini_batch_size",
            m.mini_batch_size,
            f"must divide method.batch_size={m.batch_size}",
            "choose a divisor, e.g. batch_size=10 with mini_batch_size=2",
        )
    for key in ("cliprange", "cliprange_value", "vf_coef", "target_kl"):
        p.positive(f"method.{key}", getattr(m, key), "0.2")
    p.check(m.init_kl_coef >= 0, "method.init_kl_coef", m.init_kl_coef, "must be >= 0", "use e.g. 0.2")
    for key in ("gamma", "lam"):
        value = getattr(m, key)
        p.check(0 <= value <= 1, f"method.{key}", value, "must be in [0, 1]", "use e.g. 1.0 and 0.95")
    # our loop keeps the learning rate constant: a schedule or a warmup asked for would silently not happen
    for key, constant in (
        ("lr_scheduler_type", "constant"),
        ("warmup_ratio", 0.0),
        ("lr_scheduler_kwargs", {}),
    ):
        p.check(
            getattr(m, key) == constant,
            f"method.{key}",
            getattr(m, key),
            "method=ppo's loop keeps the learning rate constant (no schedule, no warmup)",
            f"drop it (method.{key}={'{}' if constant == {} else constant}), or use method=grpo or rloo, "
            "whose trainers schedule it",
        )


def library_choices(m: Config) -> dict[str, list[str]]:
    from rlhf.models import attention_kernels

    return {"update_attn_implementation": ["", *attention_kernels()]}


def adapter_kind(m: Config) -> str | None:
    return "lora"


def train(inputs: Inputs) -> Result:
    from rlhf.methods.ppo import loop

    return loop.train(inputs)

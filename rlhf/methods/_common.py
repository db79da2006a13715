"""What the method modules share: config rules, the LoRA adapter, trainer arguments, the metrics callback.

Torch-free at import time, like the method modules' surfaces; peft, transformers and TRL are imported inside
the functions that need them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from rlhf import checkpoint
from rlhf.errors import Problems, UserError

# --------------------------------------------------------------------------- config rules


def check_training(m: Any, p: Problems) -> None:
    """The rules of TrainingConfig's keys, which every method has."""
    p.positive("method.learning_rate", m.learning_rate, "2e-4")
    p.positive("method.num_epochs", m.num_epochs, "1")
    p.check(
        m.max_steps >= 0,
        "method.max_steps",
        m.max_steps,
        "must be >= 0",
        "use 0 (train num_epochs) or a step count",
    )
    p.check(
        0 <= m.warmup_ratio < 1, "method.warmup_ratio", m.warmup_ratio, "must be in [0, 1)", "use e.g. 0.03"
    )
    p.check(
        m.max_grad_norm >= 0,
        "method.max_grad_norm",
        m.max_grad_norm,
        "must be >= 0",
        "use e.g. 1.0, or 0 for no clipping",
    )
    p.positive("method.logging_steps", m.logging_steps, "1")
    p.check(
        m.eval_steps >= 0,
        "method.eval_steps",
        m.eval_steps,
        "must be >= 0",
        "use 0 (held-out rows scored at the end only) or a step count",
    )


def check_lora(m: Any, p: Problems) -> None:
    """LoraTrainingConfig's keys (target module names are checked against the model before it loads)."""
    p.positive("method.lora_r", m.lora_r, "16")
    p.positive("method.lora_alpha", m.lora_alpha, "32 (often 2 x lora_r)")
    p.check(
        0 <= m.lora_dropout < 1, "method.lora_dropout", m.lora_dropout, "must be in [0, 1)", "use e.g. 0.05"
    )
    tm = m.target_modules
    p.check(
        tm == "all-linear" or (not isinstance(tm, str) and len(tm) > 0),
        "method.target_modules",
        tm,
        "must be all-linear or a non-empty list",
        "use all-linear or a list of module names, e.g. [q_proj,v_proj]",
    )


def check_adapter_choice(m: Any, p: Problems) -> None:
    """OptionalLoraConfig's `adapter`: lora, or none for full fine-tuning."""
    p.one_of("method.adapter", m.adapter, ("lora", "none"))
    if m.adapter == "lora":
        check_lora(m, p)


def check_sampling(m: Any, p: Problems) -> None:
    """SamplingFields' keys."""
    p.positive("method.max_new_tokens", m.max_new_tokens, "16")
    p.positive("method.temperature", m.temperature, "1.0")
    p.check(0 < m.top_p <= 1, "method.top_p", m.top_p, "must be in (0, 1]", "use 1.0 to turn it off")
    p.check(m.top_k >= 0, "method.top_k", m.top_k, "must be >= 0", "use 0 to turn it off")


# --------------------------------------------------------------------------- building blocks


def lora_config(m: Any, task_type: str = "CAUSAL_LM"):
    """The peft LoraConfig of a method node with lora_r / lora_alpha / lora_dropout / target_modules."""
    from peft import LoraConfig

    target = m.target_modules if isinstance(m.target_modules, str) else list(m.target_modules)
    return LoraConfig(
        r=m.lora_r,
        lora_alpha=m.lora_alpha,
        lora_dropout=m.lora_dropout,
        target_modules=target,
        task_type=task_type,  # SEQ_CLS also trains and saves the new score head
    )


def frozen_copy(model):
    """A frozen copy of the model: the reference of a method that trains every weight (dpo, kto with
    adapter=none). TRL's own fallback reloads it from `config._name_or_path`, which breaks for models built
    in memory or converted from GGUF."""
    import copy

    from rlhf.models import contiguous_head_input
    from rlhf.models.partitioned import partitioned_copy

    ref = partitioned_copy(model)  # under ZeRO-3: partitioned like the model (a deep copy cannot be)
    if ref is None:
        ref = copy.deepcopy(model)
    else:
        contiguous_head_input(ref)  # as models.load gives the model (a deep copy carries its hooks)
    ref.eval().requires_grad_(False)
    return ref


def profile_batch(hw: Any, kind: str) -> tuple[int, int]:
    """(per-device batch, accumulation steps) of the profile: kind sft (sft, lora, prompt tuning) or pref."""
    return getattr(hw, f"{kind}_batch_size"), getattr(hw, f"{kind}_grad_accum")


def trainer_args(inputs: Any, batch: tuple[int, int], max_length: int | None = -1) -> dict[str, Any]:
    """Every transformers / TRL config field that the hardware profile, the run and the method's shared keys
    set, for the method's own config class (SFTConfig, DPOConfig, ...). TRL's configs default to bf16 and
    gradient checkpointing even on a CPU, so nothing here is left to their defaults.

    `max_length`: -1 for the profile's max_seq_length, None to leave the field out (GRPO has none).
    """
    hw, m = inputs.hardware, inputs.config
    checkpointing = hw.gradient_checkpointing
    args = {
        # the hardware profile
        "use_cpu": hw.device == "cpu",
        "bf16": hw.precision == "bf16",
        "fp16": hw.precision == "fp16",
        "tf32": hw.tf32 if hw.device == "cuda" else None,
        "per_device_train_batch_size": batch[0],
        "gradient_accumulation_steps": batch[1],
        # transformers 5 renamed gradient_checkpointing; TRL still defaults the old name to True: set both
        "activation_checkpointing": checkpointing,
        "gradient_checkpointing": checkpointing,
        "gradient_checkpointing_kwargs": {"use_reentrant": False} if checkpointing else None,
        "optim": hw.optim,
        "dataloader_num_workers": hw.dataloader_num_workers,
        # the run: checkpoints are written under checkpoints/.incoming when the checkpoint callback asks
        # (save_strategy "no" leaves the choice to it), then published as checkpoints/step-N
        "output_dir": str(checkpoint.incoming(inputs.run.dir)),
        "save_strategy": "no",
        "save_only_model": False,  # optimizer, scheduler, scaler and RNG states too: a resume continues exactly
        "report_to": [],  # the metrics callback writes metrics.jsonl and forwards each row to the tracker
        "seed": inputs.run.seed,
        "disable_tqdm": False,  # a progress bar while training
        # the method's shared keys (TrainingConfig)
        "learning_rate": m.learning_rate,
        "num_train_epochs": m.num_epochs,
        "max_steps": m.max_steps if m.max_steps > 0 else -1,
        "lr_scheduler_type": m.lr_scheduler_type,
        "lr_scheduler_kwargs": dict(m.lr_scheduler_kwargs),
        "warmup_steps": m.warmup_ratio,  # transformers 5: a float below 1 is a fraction of the steps
        "weight_decay": m.weight_decay,
        "max_grad_norm": m.max_grad_norm,
        "logging_steps": m.logging_steps,
    }
    if max_length is not None:
        args["max_length"] = hw.max_seq_length if max_length == -1 else max_length
    return args


def eval_args(inputs: Any, batch: tuple[int, int]) -> dict[str, Any]:
    """The trainer fields that score the held-out rows every method.eval_steps steps (at the end only with
    0; see `final_eval`), for a trainer given `eval_dataset(inputs)`."""
    steps = inputs.config.eval_steps if inputs.eval_rows else 0
    return {
        "eval_strategy": "steps" if steps else "no",
        "eval_steps": steps or None,
        "per_device_eval_batch_size": batch[0],
        # the loss and the trainer's own metrics only: otherwise the eval loop keeps every batch's logits
        # (rows x tokens x vocabulary) until the held-out set is done
        "prediction_loss_only": True,
    }


def eval_dataset(inputs: Any):
    """The held-out rows as the trainer's eval_dataset (None without)."""
    from datasets import Dataset

    return Dataset.from_list(inputs.eval_rows) if inputs.eval_rows else None


def final_eval(trainer: Any, inputs: Any) -> dict[str, float]:
    """The trainer's held-out metrics at the last step ({} without held-out rows, or when a stop request
    ended the run early): the schedule's last evaluation where it fell on the last step, else one more."""
    plan = inputs.checkpoints
    if not inputs.eval_rows or (plan is not None and plan.stopping):
        return {}
    done = [h for h in trainer.state.log_history if "eval_loss" in h]
    if done and done[-1].get("step") == trainer.state.global_step:
        return done[-1]
    return trainer.evaluate()


def heldout_reward(inputs: Any, model: Any, batch_size: int = 8) -> float | None:
    """The mean reward of greedy answers to the held-out prompts (ppo, grpo, rloo): what the policy learned,
    on prompts it never trained on. None without held-out rows, or when a stop request ended the run early."""
    from rlhf import generation, rewards

    plan = inputs.checkpoints
    if not inputs.eval_rows or (plan is not None and plan.stopping):
        return None
    scores: list[float] = []
    for start in range(0, len(inputs.eval_rows), batch_size):
        prompts = [row["prompt"] for row in inputs.eval_rows[start : start + batch_size]]
        answers = generation.greedy(model, inputs.tokenizer, prompts, inputs.config.max_new_tokens)
        scores += rewards.total(inputs.rewards, prompts, answers)[0]
    return sum(scores) / len(scores)


def callbacks(inputs: Any) -> list:
    """The callbacks every TRL method passes its trainer: metrics to the sink, checkpoints and stops."""
    return [metrics_callback(inputs.metrics), checkpoint_callback(inputs)]


def fit(trainer: Any, inputs: Any):
    """trainer.train(), from the checkpoint the run resumes from, if any; what trains is float32, LoRA's
    dropout is the method's, adapter layers take autocast's inputs as they come and, where the profile says,
    the MLPs and norms keep less for backward and the decoder runs on a padded batch's real tokens only
    (rlhf.models, rlhf.models.lean)."""
    from rlhf.models import (
        adapter_inputs_follow_autocast,
        in_backward,
        pack_padded_rows,
        set_adapter_dropout,
        upcast_trainable,
    )
    from rlhf.models.lean import make_lean
    from rlhf.models.partitioned import virtual_tokens_sharded

    upcast_trainable(trainer.model)  # before train() builds the optimizer over these parameters
    if getattr(inputs.config, "lora_dropout", 0) > 0:  # TRL's preference trainers turn every dropout off
        set_adapter_dropout(trainer.model, inputs.config.lora_dropout)
    adapter_inputs_follow_autocast(trainer.model)
    virtual_tokens_sharded(trainer.model)
    if inputs.hardware.lean_layers:
        make_lean(trainer.model)
    unhook = in_backward.install(trainer) if inputs.hardware.optimizer_in_backward else None
    if inputs.hardware.pack_rows:
        pack_padded_rows(trainer.model)
        if getattr(trainer, "ref_model", None) is not None:  # a frozen copy: its passes packed alike
            pack_padded_rows(trainer.ref_model, frozen=True)
    head_tiles(inputs.hardware)
    plan = inputs.checkpoints
    resume = str(plan.resume_from) if plan is not None and plan.resume_from is not None else None
    try:
        return trainer.train(resume_from_checkpoint=resume)
    finally:
        if unhook is not None:  # the model may be trained again (a pipeline's next stage): as it was
            unhook()


def head_tiles(hw: Any) -> tuple[int, int]:
    """Set the tile of TRL's fused LM head (tokens, vocabulary entries) to the profile's; the tile in force.

    TRL scores log-probs without the full logits: one matmul tile at a time, folded by a Triton kernel on a
    GPU. Without Triton (a CPU) the fold is plain torch, and every step of it makes a float32 copy of the
    tile: at TRL's 4096 x 32768 a DPO step on SmolLM2-135M held ~1 GB of them (bench/footprint.py). The sizes
    are module constants that TRL reads at each call (trl.kernels.chunked_logprob.TOKEN_CHUNK_SIZE,
    trl.trainer.utils._CHUNKED_LOGPROB_CHUNK_SIZE); 0 in the profile leaves TRL's.
    """
    import trl.kernels.chunked_logprob as kernel
    import trl.trainer.utils as utils

    if hw.head_tile_tokens > 0:
        kernel.TOKEN_CHUNK_SIZE = hw.head_tile_tokens
    if hw.head_tile_vocab > 0:
        utils._CHUNKED_LOGPROB_CHUNK_SIZE = hw.head_tile_vocab
    return kernel.TOKEN_CHUNK_SIZE, utils._CHUNKED_LOGPROB_CHUNK_SIZE


def checkpoint_callback(inputs: Any):
    """A TrainerCallback that saves a checkpoint when the plan says so (every N steps, at the end, on a stop
    request), stops the trainer after the step a signal arrived in, and publishes each checkpoint whole."""
    import time
    from pathlib import Path

    from transformers import TrainerCallback

    plan = inputs.checkpoints

    class Checkpoints(TrainerCallback):
        started = 0.0

        def on_step_end(self, args, state, control, **kwargs):
            if plan is None:
                return
            plan.agree()  # a signal that reached one process only
            self.decide(state, control)

        def on_log(self, args, state, control, **kwargs):
            # a monitor rule reacts to the step's logs, which come after on_step_end: decide again (the
            # trainer saves after logging). Every rank logs at the same steps, but only rank 0's monitor sees
            # the logs: the ranks agree first, so that all of them save and stop together
            if plan is None:
                return
            plan.agree()
            if (plan.wanted or plan.halt is not None or plan.stopping) and not control.should_save:
                self.decide(state, control)

        def decide(self, state, control):
            if plan.due(state.global_step, last=state.global_step >= state.max_steps):
                control.should_save = True
                self.started = time.time()
            if plan.ends_here(state.global_step) and control.should_save:  # once it can be saved
                control.should_training_stop = True

        def on_evaluate(self, args, state, control, **kwargs):
            # the trainer scores its held-out rows between the step and the save: the save starts after
            self.started = time.time()

        def on_save(self, args, state, control, **kwargs):
            if plan is None:
                return
            # every rank writes its part (its RNG state; under FSDP its shard of the weights and optimizer):
            # rank 0 moves the directory once all of them have
            checkpoint.every_rank_here()
            if not state.is_world_process_zero:
                return
            plan.publish(
                Path(args.output_dir) / f"checkpoint-{state.global_step}", state.global_step, self.started
            )

    return Checkpoints()


def metrics_callback(sink: Any):
    """A transformers TrainerCallback that hands every trainer log to the metrics sink (rank 0 only)."""
    from transformers import TrainerCallback

    class ToMetrics(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and state.is_world_process_zero:
                sink.write(state.global_step, state.epoch or 0.0, logs)

    return ToMetrics()


def last_logged(trainer: Any, key: str) -> float | None:
    """The last value a trainer logged under `key`, or None."""
    logged = [h[key] for h in trainer.state.log_history if key in h]
    return logged[-1] if logged else None


@contextlib.contextmanager
def library_checks(trainer: str, inputs: Any) -> Iterator[None]:
    """A value that the library's config or trainer rejects becomes one line naming it, like our own checks:
    the method.* or hardware.* key its message names (else `method`), the library's words, the fix.

    Wraps only the construction of a trainer and its config: errors raised while training keep their
    traceback (they are not the user's to fix).
    """
    try:
        yield
    except ValueError as e:
        import dataclasses

        message = " ".join(str(e).split())[:300]
        key = "method"
        for group, node in (("method", inputs.config), ("hardware", inputs.hardware)):
            named = [f.name for f in dataclasses.fields(node) if f.name in message]
            if named:
                key = f"{group}.{max(named, key=len)}={getattr(node, max(named, key=len))}"
                break
        raise UserError(
            f"{key}: {trainer} rejected it ({message}); fix: change that value "
            "(`python -m rlhf --cfg job` shows each)"
        ) from e


def field_choices(config_class: type, name: str) -> list[str]:
    """The values a library's config field declares valid: its metadata's `choices`, else the values its help
    text lists ("Possible values are: 'a', 'b'. ...").

    TRL keeps most loss types in the field's help text only (the trainers check them at the first step, deep
    in the loss), so the list is read from there: it follows the installed version, and no copy lives here.
    """
    import dataclasses
    import re

    field = next(f for f in dataclasses.fields(config_class) if f.name == name)
    if field.metadata.get("choices"):
        return list(field.metadata["choices"])
    help_text = field.metadata.get("help", "")
    found = re.search(r"(?:Possible|Supported) values are:?(.*?)(?:\.\s|\.$)", help_text, re.S)
    return re.findall(r"'([\w-]+)'", found.group(1)) if found else []


def check_group(m: Any, p: Problems) -> None:
    """GroupPolicyFields' keys (GRPO, RLOO): the group the advantages compare, the updates and the clip."""
    p.check(m.beta >= 0, "method.beta", m.beta, "must be >= 0", "use e.g. beta=0.04")
    p.check(
        m.num_generations >= 2,
        "method.num_generations",
        m.num_generations,
        "must be >= 2 (advantages compare a group)",
        "use e.g. 4 or 8",
    )
    p.positive("method.prompts_per_step", m.prompts_per_step, "4")
    p.positive("method.num_iterations", m.num_iterations, "1")
    p.positive("method.epsilon", m.epsilon, "0.2")
    p.check(
        m.epsilon_high is None or m.epsilon_high >= m.epsilon,
        "method.epsilon_high",
        m.epsilon_high,
        f"must be >= method.epsilon={m.epsilon}",
        "use null (= epsilon) or e.g. 0.28",
    )


# monitor signal -> the key TRL's GRPOTrainer and RLOOTrainer log (kl only with method.beta > 0)
GROUP_POLICY_SIGNALS = {
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


def group_policy_args(inputs: Any) -> dict[str, Any]:
    """The TRL config fields GRPOConfig and RLOOConfig share: the trainer's (with the algorithm's batch:
    prompts_per_step x num_generations completions, no accumulation), sampling, the group, the clip and
    the reward weights. A generation's completions serve num_iterations steps: checkpoints fall between
    generations."""
    m = inputs.config
    if inputs.checkpoints is not None:
        inputs.checkpoints.boundary = m.num_iterations
    return {
        **trainer_args(inputs, (m.prompts_per_step * m.num_generations, 1), max_length=None),
        "beta": m.beta,
        "num_generations": m.num_generations,
        "num_iterations": m.num_iterations,
        "epsilon": m.epsilon,
        "epsilon_high": m.epsilon_high,
        "mask_truncated_completions": m.mask_truncated_completions,
        "max_completion_length": m.max_new_tokens,
        "temperature": m.temperature,
        "top_k": m.top_k,
        "top_p": m.top_p,
        "reward_weights": [r.weight for r in inputs.rewards],
    }


def group_policy_trainer(trainer_class: Any, args: Any, inputs: Any):
    """A TRL GRPO-style trainer on the run's prompts and reward components, with a LoRA adapter (the
    reference is the adapter disabled: no second model)."""
    from datasets import Dataset

    return trainer_class(
        model=inputs.model,
        reward_funcs=[r.func for r in inputs.rewards],
        args=args,
        train_dataset=Dataset.from_list(inputs.rows),
        processing_class=inputs.tokenizer,
        peft_config=lora_config(inputs.config),
        callbacks=callbacks(inputs),
    )


def group_policy_result(trainer: Any, output: Any, inputs: Any):
    """GRPO's and RLOO's results: the last logged reward (the weighted sum, without a KL term) and the
    reward on the held-out prompts."""
    from trl.models import unwrap_model_for_generation

    from rlhf.methods import Result

    # every rank generates; under ZeRO-3 each first gathers the whole model, as the trainer does for rollouts
    with unwrap_model_for_generation(trainer.model_wrapped, trainer.accelerator) as model:
        heldout = heldout_reward(inputs, model)
    return Result(
        model=trainer.model,
        metrics=dict(output.metrics),
        extra={"final_reward_mean": last_logged(trainer, "reward"), "heldout_reward_mean": heldout},
    )

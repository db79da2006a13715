"""The rollout loop of method=ppo (rlhf/methods/ppo/__init__.py describes the algorithm); imported by `train`."""

from __future__ import annotations

import contextlib
import math
import time
from typing import Any

import torch
from torch import nn

from rlhf import rewards as reward_group
from rlhf.generation import encode_chat_prompts
from rlhf.methods import Inputs, Result
from rlhf.methods._common import heldout_reward, lora_config
from rlhf.methods.ppo import core
from rlhf.models import attention_kernel
from rlhf.models.partitioned import is_partitioned, is_sharded, whole_copies, whole_weights
from rlhf.runtime import launch_engine


class PolicyWithValue(nn.Module):
    """A causal LM (with its LoRA adapter) and a value head on its last hidden state.

    `forward` returns logits and values for the last `response_len` tokens only (the positions that predict
    them): the vocabulary projection of the prompt's positions is never computed. Every pass of a rollout goes
    through this module's `forward` (`task`), not its policy's: under FSDP it is the root, whose hooks gather
    the weights its own shard holds (embeddings, final norm, value head) and whose first forward sets FSDP up
    (the decoder layers gather their own in theirs).
    """

    def __init__(self, policy: nn.Module):
        super().__init__()
        self.policy = policy
        # FSDP (accelerate) shards each of these layers on its own, as it would the policy's
        self._no_split_modules = getattr(policy, "_no_split_modules", None)
        hidden = policy.config.hidden_size
        self.value_head = nn.Linear(hidden, 1, device=policy.device)
        # zero: a fresh critic predicts 0, so the first advantages are the lambda-discounted scores themselves.
        # A randomly initialised head read SmolLM2's final hidden states as values of std ~1.5 against returns
        # of +-1: its errors outweighed the scores in every advantage, its explained variance stayed below 0
        # for 30 rollouts, and experiment=ppo-positive learned or not by the seed (seed 1: 0.3 after 30).
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    def forward(
        self, input_ids, attention_mask, position_ids=None, response_len: int = 0, task="policy", **kw
    ):
        """task: "policy" (logits and values), "reference" (the logits without the adapter) or "sample" (the
        policy's completions of the prompts, `kw` its generation settings)."""
        if task == "sample":
            return self.policy.generate(input_ids=input_ids, attention_mask=attention_mask, **kw)
        reference = task == "reference"  # the same weights without the adapter
        with self.policy.disable_adapter() if reference else contextlib.nullcontext():
            out = self.policy(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                output_hidden_states=not reference,
                logits_to_keep=response_len + 1,
            )
        if reference:
            return out.logits[:, :-1]
        hidden = out.hidden_states[-1][:, -response_len - 1 : -1]
        values = self.value_head(hidden.to(self.value_head.weight.dtype)).squeeze(-1)
        return out.logits[:, :-1], values

    def generate(self, input_ids, attention_mask, **kw):
        """The policy's `generate`, through this module's forward (rlhf.generation.greedy calls it)."""
        return self(input_ids, attention_mask, task="sample", **kw)

    @property
    def device(self):
        return self.policy.device


def train(inputs: Inputs) -> Result:
    from accelerate import Accelerator
    from peft import get_peft_model
    from tqdm.auto import tqdm

    from rlhf.models import adapter_inputs_follow_autocast, upcast_trainable

    m, hw = inputs.config, inputs.hardware
    cpu = hw.device == "cpu"
    if cpu and launch_engine() == "deepspeed":
        # accelerate turns DeepSpeed off with cpu=True, and without it finds no backend on a CPU: the process
        # group comes first over gloo, as transformers sets it up for TRL's trainers (rlhf.distributed)
        from accelerate import PartialState

        PartialState(cpu=True, backend="gloo")
        cpu = False
    accelerator = Accelerator(
        mixed_precision=hw.precision if hw.precision in ("bf16", "fp16") else "no",
        cpu=cpu,
        gradient_accumulation_steps=m.gradient_accumulation_steps,
    )
    torch.manual_seed(inputs.run.seed + accelerator.process_index)

    tokenizer = inputs.tokenizer
    model = PolicyWithValue(get_peft_model(inputs.model, lora_config(m)))
    upcast_trainable(model)  # the adapter and the value head train in float32 on a bf16 base
    # sampling runs outside autocast, the passes and epochs in it
    adapter_inputs_follow_autocast(model.policy)
    optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad], hw.optim, m)
    if is_deepspeed(accelerator):  # ZeRO-2 / 3 (rlhf.distributed): what TRL's trainers would fill in
        ds = accelerator.state.deepspeed_plugin.deepspeed_config
        ds.update(
            train_micro_batch_size_per_gpu=m.mini_batch_size,
            gradient_accumulation_steps=m.gradient_accumulation_steps,
            train_batch_size=m.mini_batch_size * m.gradient_accumulation_steps * accelerator.num_processes,
            gradient_clipping=m.max_grad_norm,
        )
        hidden = model.policy.config.hidden_size
        for key, value in {  # transformers' values, from the hidden size
            "reduce_bucket_size": hidden * hidden,
            "stage3_prefetch_bucket_size": int(0.9 * hidden * hidden),
            "stage3_param_persistence_threshold": 10 * hidden,
        }.items():
            if ds["zero_optimization"].get(key) == "auto":
                ds["zero_optimization"][key] = value
        # zero3-offload: DeepSpeed's own AdamW steps the offloaded states, with our optimizer's settings
        if "optimizer" in ds:
            from accelerate.utils import DummyOptim

            settings = optimizer.defaults
            ds["optimizer"]["params"].update({k: settings[k] for k in ("lr", "betas", "eps", "weight_decay")})
            optimizer = DummyOptim(optimizer.param_groups[0]["params"], lr=settings["lr"])
    model, optimizer = accelerator.prepare(model, optimizer)
    unwrapped: PolicyWithValue = accelerator.unwrap_model(model)
    sharded = is_sharded(unwrapped)  # FSDP: the layers are sharded again after a rollout as after a forward
    reshard = accelerator.state.fsdp_plugin.reshard_after_forward if sharded else True

    kl_ctl = core.AdaptiveKLController(m.init_kl_coef, m.target_kl, m.kl_horizon)
    steps = m.max_steps if m.max_steps > 0 else math.ceil(m.num_epochs * len(inputs.rows) / m.batch_size)
    prompts = [row["prompt"] for row in inputs.rows]
    state = {"step": 0, "tokens_seen": 0, "losses": [], "logs": {}}
    plan = inputs.checkpoints
    if plan is not None and plan.resume_from is not None:
        state = load_state(plan.resume_from, unwrapped, optimizer, accelerator, kl_ctl)
    started = time.time()

    bar = tqdm(
        range(state["step"] + 1, steps + 1),
        initial=state["step"],
        total=steps,
        desc="ppo",
        disable=not accelerator.is_main_process,
    )
    for step in bar:
        t0 = time.time()
        batch_prompts = [prompts[((step - 1) * m.batch_size + i) % len(prompts)] for i in range(m.batch_size)]
        # the policy and reference passes in the same precision (KL starts at 0); on a CPU the sampling runs
        # outside autocast: decoding is memory-bound, and autocast re-casts every float32 weight at every token
        # (10 completions x 10 tokens on SmolLM2, 2-core AMX CPU: 1.55 instead of 1.9 s)
        # ZeRO-3 and FSDP: each rank samples from the whole weights, as TRL's trainers do under ZeRO-3
        with whole_weights(unwrapped, reshard):
            rollout = make_rollout(
                unwrapped, tokenizer, batch_prompts, m, inputs.rewards, kl_ctl.value, accelerator.autocast,
                sample_in_autocast=hw.device != "cpu", kernel=m.update_attn_implementation,
            )  # fmt: skip
        t_opt = time.perf_counter()
        with attention_kernel(unwrapped.policy, m.update_attn_implementation):
            stats = optimise(model, optimizer, accelerator, rollout, m)
        stats["time/ppo_epochs_s"] = time.perf_counter() - t_opt
        if m.adaptive_kl:
            kl_ctl.update(rollout["kl"], m.batch_size)

        rollout_tokens = int(rollout["attention_mask"].sum())  # prompts + completions
        state["tokens_seen"] += rollout_tokens
        state["losses"].append(stats["loss"])
        step_time = time.time() - t0
        logs = {**stats, **rollout["stats"], "kl_coef": kl_ctl.value, "num_tokens": state["tokens_seen"]}
        logs.update(tokens_per_s=rollout_tokens / step_time, step_time=step_time)
        inputs.metrics.write(step, step * m.batch_size / max(len(prompts), 1), logs)
        bar.set_postfix(reward=f"{logs['reward']:.2f}", kl=f"{logs['kl']:.3f}")
        state.update(step=step, logs=logs)
        if plan is not None:
            plan.agree()  # each rank's monitor saw its own rollout: a stop or checkpoint on one is on all
        if plan is not None and plan.due(step, last=step == steps):  # every rank writes its part
            save_state(plan, state, unwrapped, optimizer, accelerator, kl_ctl)
        if plan is not None and plan.ends_here(step):  # a signal, or a monitor rule's stop
            break

    runtime = time.time() - started
    # every rank answers the held-out prompts
    if sharded:  # FSDP: from the whole weights, through the root's forward, which gathers its own group
        with whole_weights(unwrapped, reshard):
            heldout = heldout_reward(inputs, unwrapped)
        # FSDP keeps the root's group gathered after a forward without gradients (a backward would free it):
        # sharded again, as rlhf.distributed.gather_weights collects the weights
        unwrapped.reshard()
    else:
        heldout = heldout_reward(inputs, unwrapped.policy)
    final = {k: state["logs"][k] for k in ("reward", "success_rate", "kl") if k in state["logs"]}
    losses = state["losses"]
    return Result(
        model=unwrapped.policy,
        metrics={
            "train_runtime": runtime,
            "train_loss": sum(losses) / len(losses) if losses else None,
            "num_tokens": state["tokens_seen"],
        },
        extra={**{f"final_{k}": v for k, v in final.items()}, "heldout_reward_mean": heldout},
        # beside the adapter: the critic can be reused
        heads={"value_head": whole_head(unwrapped.value_head, sharded)},
    )


# --------------------------------------------------------------------------- checkpoints


def save_state(plan, state: dict, model: PolicyWithValue, optimizer, accelerator, kl_ctl) -> None:
    """Everything the next rollout depends on: the adapter and value head, the optimizer, the gradients
    accumulated towards its next step, the KL coefficient, the step (which is the prompt cursor), the
    accumulation counter and every RNG. Called on every process: each writes its own RNG (its rollouts
    sample from it) and, under DeepSpeed, its partition of the optimizer; rank 0 then writes the rest and
    publishes the checkpoint once every rank has written its part."""
    import json
    import random

    import numpy as np
    from safetensors.torch import save_file

    from rlhf import checkpoint

    t0 = time.time()
    out = checkpoint.incoming(plan.run_dir) / f"step-{state['step']}"
    out.mkdir(parents=True, exist_ok=True)
    rank = accelerator.process_index
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng.update({f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    save_file(rng, out / f"rng-{rank}.safetensors")
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    host = {"python_random": random.getstate(), "numpy_random": [kind, keys.tolist(), pos, has_gauss, gauss]}
    (out / f"rng-{rank}.json").write_text(json.dumps(host))
    if is_deepspeed(accelerator):  # ZeRO partitions the optimizer: each rank holds its own part
        torch.save(optimizer.state_dict(), out / f"optimizer-{rank}.pt")
    checkpoint.every_rank_here()
    # ZeRO-3 and FSDP: every rank takes part in gathering them
    trainable = whole_copies({n: p for n, p in model.named_parameters() if p.requires_grad})
    sharded = is_sharded(model)
    if sharded:  # FSDP: the optimizer whole, by parameter name (each rank sends its shard of it)
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        whole_optimizer = get_optimizer_state_dict(model, unwrap_optimizer(optimizer), options=options)
    if accelerator.is_main_process:
        save_file(trainable, out / "trainable.safetensors")
        # gradients accumulated since the last optimizer step: with gradient_accumulation_steps > 1 an
        # optimizer step can span rollouts, and a resumed run that lost them would step on part of its
        # mini-batches only (under DeepSpeed and FSDP rollouts end on a step, rlhf.distributed: none are left)
        pending = {
            n: p.grad.detach().cpu().contiguous()
            for n, p in model.named_parameters()
            if p.requires_grad and p.grad is not None
        }
        if pending:
            save_file(pending, out / "gradients.safetensors")
        if sharded:
            torch.save(whole_optimizer, out / "optimizer.pt")
        elif not is_deepspeed(accelerator):
            torch.save(optimizer.state_dict(), out / "optimizer.pt")
        payload = {**state, "kl_coef": kl_ctl.value, "accumulation_step": accelerator.step}
        (out / "state.json").write_text(json.dumps(payload))
        plan.publish(out, state["step"], t0)
    checkpoint.every_rank_here()  # no rank runs ahead into the next checkpoint's directory


def load_state(path, model: PolicyWithValue, optimizer, accelerator, kl_ctl) -> dict:
    """The state `save_state` wrote, restored into the model, the optimizer and this process's RNGs."""
    import json
    import random

    import numpy as np
    from safetensors.torch import load_file

    sharded = is_sharded(model)
    if sharded:  # FSDP: each rank keeps its shard of the whole tensors saved, by name
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        whole = StateDictOptions(full_state_dict=True, strict=False)
        set_model_state_dict(model, load_file(path / "trainable.safetensors"), options=whole)
        saved = torch.load(path / "optimizer.pt", weights_only=True)
        set_optimizer_state_dict(model, unwrap_optimizer(optimizer), saved, options=whole)
    elif not is_partitioned(model):  # ZeRO-3 restores them with the optimizer, from its float32 masters
        missing, unexpected = model.load_state_dict(load_file(path / "trainable.safetensors"), strict=False)
        assert not unexpected, unexpected  # the same model and adapter, or the checkpoint is not this run's
    if (path / "gradients.safetensors").is_file():  # an optimizer step that spans the checkpoint
        pending = load_file(path / "gradients.safetensors")
        for name, param in model.named_parameters():
            if name in pending:
                param.grad = pending[name].to(param.device, param.dtype)
    rank = accelerator.process_index
    if is_deepspeed(accelerator):
        # ZeRO's partition holds three DeepSpeed records beside its tensors: allowed by name, nothing else is
        from deepspeed.runtime.fp16.loss_scaler import LossScaler
        from deepspeed.runtime.zero.config import ZeroStageEnum
        from deepspeed.utils.tensor_fragment import fragment_address

        with torch.serialization.safe_globals([LossScaler, ZeroStageEnum, fragment_address]):
            parts = [
                torch.load(path / f"optimizer-{r}.pt", weights_only=True)
                for r in range(accelerator.num_processes)
            ]
        # every rank's partition, as DeepSpeed's own loader passes them; the float32 masters as saved
        optimizer.optimizer.load_state_dict(parts, load_from_fp32_weights=True)
    elif not sharded:
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    payload = json.loads((path / "state.json").read_text())
    own = path / f"rng-{rank}.safetensors"
    if own.is_file():
        rng, host = load_file(own), json.loads((path / f"rng-{rank}.json").read_text())
    else:  # a checkpoint of an earlier version: rank 0's RNGs, kept in state.json and rng.safetensors
        rng, host = load_file(path / "rng.safetensors"), dict(payload)
    for key in ("python_random", "numpy_random"):
        payload.pop(key, None)
    torch.set_rng_state(rng["torch"])
    if torch.cuda.is_available():
        torch.cuda.set_rng_state_all(
            [rng[f"cuda{i}"] for i in range(torch.cuda.device_count()) if f"cuda{i}" in rng]
        )
    version, internal, gauss = host["python_random"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = host["numpy_random"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    kl_ctl.value = payload.pop("kl_coef")
    accelerator.step = payload.pop("accumulation_step")
    return payload


def is_deepspeed(accelerator) -> bool:
    return accelerator.state.deepspeed_plugin is not None


def unwrap_optimizer(optimizer):
    """torch's optimizer inside accelerate's wrapper."""
    return getattr(optimizer, "optimizer", optimizer)


def whole_head(head: nn.Linear, sharded: bool) -> nn.Linear:
    """The value head itself, or under ZeRO-3 or FSDP a copy with its whole weights (a collective: every rank
    calls it)."""
    if not (sharded or is_partitioned(head)):
        return head
    state = whole_copies(dict(head.named_parameters()))
    whole = nn.Linear(head.in_features, head.out_features, dtype=state["weight"].dtype)
    whole.load_state_dict(state)
    return whole


class PhaseClock:
    """Seconds per phase of a rollout (`time/<phase>_s` in metrics.jsonl): where a rollout's time goes."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.last = time.perf_counter()

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.seconds[f"time/{phase}_s"] = now - self.last
        self.last = now


@torch.no_grad()
def make_rollout(
    model: PolicyWithValue,
    tokenizer,
    prompts: list,
    m,
    rewards: list,
    kl_coef: float,
    autocast=contextlib.nullcontext,
    sample_in_autocast: bool = True,
    kernel: str = "",
) -> dict[str, Any]:
    """Sample, score, and compute everything the PPO epochs need (log-probs, values, advantages, returns).

    `autocast` (the accelerator's) wraps the policy and reference passes, and the sampling too unless
    `sample_in_autocast` is false. The passes run the PPO epochs' attention `kernel` ("": the model's):
    the old log-probs and the reference then come from the same arithmetic as the epochs' new log-probs, so
    the first epoch's ratios are exactly 1 and the KL starts at 0; only the sampling keeps the model's kernel.
    """
    model.eval()
    clock = PhaseClock()
    query = encode_chat_prompts(tokenizer, prompts, model.policy.device)
    with autocast() if sample_in_autocast else contextlib.nullcontext():
        generated = sample(model, tokenizer, query, m)
    clock.lap("generate")
    with autocast(), attention_kernel(model.policy, kernel):
        return score_and_pass(model, tokenizer, prompts, m, rewards, kl_coef, query, generated, clock)


def sample(model: PolicyWithValue, tokenizer, query: dict, m) -> torch.Tensor:
    """`batch_size` completions of the prompts, sampled as the method's sampling keys say."""
    return model.generate(
        **query,
        do_sample=True,
        max_new_tokens=m.max_new_tokens,
        temperature=m.temperature,
        top_k=m.top_k,  # 0 = off: sampled from the same distribution the log-probs are computed on
        top_p=m.top_p,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )


def score_and_pass(model, tokenizer, prompts, m, rewards, kl_coef, query, generated, clock) -> dict[str, Any]:
    """Score the completions, then the policy pass (old log-probs, values), the reference pass, and GAE."""
    q_len = query["input_ids"].shape[1]
    response = generated[:, q_len:]
    response_mask = response_mask_until_eos(response, tokenizer.eos_token_id)
    completions = tokenizer.batch_decode(
        response * response_mask + tokenizer.pad_token_id * (1 - response_mask), skip_special_tokens=True
    )

    scores, parts = reward_group.total(rewards, prompts, completions)
    scores = torch.tensor(scores, dtype=torch.float32, device=response.device)
    clock.lap("score")

    input_ids = torch.cat([query["input_ids"], response], dim=1)
    attention_mask = torch.cat([query["attention_mask"], response_mask], dim=1)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    response_len = response.shape[1]
    logits, values = model(input_ids, attention_mask, position_ids, response_len)
    logprobs = response_logprobs(logits, response, m.temperature)
    values = values.float()
    clock.lap("policy_pass")
    ref_logits = model(input_ids, attention_mask, position_ids, response_len, task="reference")
    ref_logprobs = response_logprobs(ref_logits, response, m.temperature)
    clock.lap("reference_pass")

    mask = response_mask.float()
    token_rewards, kl = core.token_rewards(scores, logprobs, ref_logprobs, mask, kl_coef)
    advantages, returns = core.gae(token_rewards, values, mask, m.gamma, m.lam)
    if m.whiten_advantages:
        advantages = core.whiten(advantages, mask)
    equal_scores = bool((scores == scores[0]).all())
    if m.skip_equal_scores and equal_scores:
        advantages = torch.zeros_like(advantages)

    entropy = core.masked_mean(core.entropy_from_logits(logits), mask)
    kl_per_sequence = kl.sum(dim=1).mean().item()
    stats = {
        "reward": scores.mean().item(),
        "reward_std": scores.std().item() if len(scores) > 1 else 0.0,
        **{f"rewards/{name}": sum(v) / len(v) for name, v in parts.items()},
        "kl": kl_per_sequence,
        "entropy": entropy.item(),
        "response_length": mask.sum(dim=1).mean().item(),
        "response_truncated_share": (mask.sum(dim=1) >= m.max_new_tokens).float().mean().item(),
        "explained_variance": core.explained_variance(values, returns, mask).item(),
        "equal_scores": float(equal_scores),  # 1: no sample scored differently from the others
        **clock.seconds,
    }
    if "keyword" in parts:
        stats["success_rate"] = sum(v > 0 for v in parts["keyword"]) / len(parts["keyword"])
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "position_ids": position_ids,
        "response": response,
        "mask": mask,
        "logprobs": logprobs,
        "values": values,
        "advantages": advantages,
        "returns": returns,
        "kl": kl_per_sequence,
        "stats": stats,
        "completions": completions,
    }


def optimise(model, optimizer, accelerator, rollout: dict[str, Any], m) -> dict[str, float]:
    """`ppo_epochs` passes over the rollout in mini-batches; one optimizer step per accumulated group."""
    model.train()
    totals: dict[str, list[float]] = {}
    for _ in range(m.ppo_epochs):
        order = torch.randperm(m.batch_size)
        for start in range(0, m.batch_size, m.mini_batch_size):
            idx = order[start : start + m.mini_batch_size]
            with accelerator.accumulate(model):
                response = rollout["response"][idx]
                logits, values = model(
                    rollout["input_ids"][idx],
                    rollout["attention_mask"][idx],
                    rollout["position_ids"][idx],
                    response.shape[1],
                )
                logprobs = response_logprobs(logits, response, m.temperature)
                values = values.float()
                mask = rollout["mask"][idx]
                pg_loss, pg_stats = core.policy_loss(
                    logprobs, rollout["logprobs"][idx], rollout["advantages"][idx], mask, m.cliprange
                )
                vf_loss, vf_stats = core.value_loss(
                    values, rollout["values"][idx], rollout["returns"][idx], mask, m.cliprange_value
                )
                loss = pg_loss + m.vf_coef * vf_loss
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    clip = m.max_grad_norm if m.max_grad_norm > 0 else float("inf")  # 0: no clipping
                    norm = accelerator.clip_grad_norm_(model.parameters(), clip)
                    totals.setdefault("grad_norm", []).append(float(norm))  # before clipping
                optimizer.step()
                optimizer.zero_grad()
            for key, value in {
                "loss": loss,
                "policy_loss": pg_loss,
                "value_loss": vf_loss,
                **pg_stats,
                **vf_stats,
            }.items():
                totals.setdefault(key, []).append(float(value.detach()))
    return {k: sum(v) / len(v) for k, v in totals.items()}


def response_logprobs(logits: torch.Tensor, response: torch.Tensor, temperature: float) -> torch.Tensor:
    """log pi(token) for each response token, under the sampling temperature (logits: one per response token)."""
    logprobs = torch.log_softmax(logits.float() / temperature, dim=-1)
    return torch.gather(logprobs, 2, response.unsqueeze(-1)).squeeze(-1)


def response_mask_until_eos(response: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """1 up to and including the first end-of-sequence token, 0 after it."""
    is_eos = response == eos_token_id
    after_eos = (is_eos.cumsum(dim=1) - is_eos.long()) > 0
    return (~after_eos).long()


def make_optimizer(params: list, optim: str, m) -> torch.optim.Optimizer:
    """The hardware profile's optimizer for our own loop (TRL's trainers read `optim` themselves): one of
    rlhf.methods.ppo.OPTIMIZERS, which the run checks first."""
    kwargs = {"lr": m.learning_rate, "weight_decay": m.weight_decay}
    if optim.startswith(("paged_adamw", "adamw_8bit", "adamw_bnb_8bit")):
        import bitsandbytes as bnb

        cls = {
            "paged_adamw_32bit": bnb.optim.PagedAdamW32bit,
            "paged_adamw_8bit": bnb.optim.PagedAdamW8bit,
        }.get(optim, bnb.optim.AdamW8bit)
        return cls(params, **kwargs)
    if optim == "sgd":
        return torch.optim.SGD(params, **kwargs)
    if optim == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(params, scale_parameter=False, relative_step=False, **kwargs)
    return torch.optim.AdamW(params, fused=optim == "adamw_torch_fused", **kwargs)

"""Peak memory per device, estimated before any weights load, and the verdict on it.

estimate(cfg, hw)   the terms one training step holds on each device (weights, adapter, gradients, optimizer
                    states, a reference model, activations, logits, the generation KV cache, the framework),
                    for the method, the hardware profile and a sharding engine; `python -m rlhf.plan` prints them
check(cfg, hw)      what a run calls before its weights load: a one-line refusal naming the largest term and the
                    cheapest fix when the estimate exceeds the device, a warning above 90%; nothing with
                    plan.check=false
verdict(...)        that judgement on an estimate: "fits: X of Y GB", the warning, or the UserError

The model's size comes from its config alone, built on the meta device (no memory): model.architecture (every
preset carries its published config.json's numbers), a local directory's or the Hugging Face cache's
config.json, or, for a run that is about to download the model anyway, the hub. All sizes are GiB (2**30 bytes),
as torch reports a GPU's memory.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from rlhf import config, hardware, methods
from rlhf.errors import UserError
from rlhf.schema import HardwareConfig

GiB = 2**30
ENGINES = ("none", "ddp", "fsdp", "deepspeed-zero2", "deepspeed-zero3", "deepspeed-zero3-offload")
SHARDED = (
    "ddp",
    "deepspeed-zero2",
    "deepspeed-zero3",
    "fsdp",
    "deepspeed-zero3-offload",
)  # the sharding line
PARTITIONED = ("deepspeed-zero3", "deepspeed-zero3-offload")  # a model built partitioned (zero.Init)
GPU_COUNTS = (2, 4, 8)
WARN_AT = 0.9  # above this share of the device, fragmentation in the allocator can still run it out
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}

# The CUDA context with cuBLAS / cuDNN workspaces and lazily loaded kernels, plus the caching allocator's
# rounding: ~0.5 GiB on T4 to H100 with CUDA_MODULE_LOADING=LAZY (torch's default). NCCL adds its buffers
# when several processes train.
CUDA_CONTEXT = 0.5 * GiB
NCCL_BUFFERS = 0.25 * GiB
# A run's Python process with torch, transformers, TRL, peft and datasets loaded holds ~0.7 GB of RAM before
# its model counts (peak RSS of `python -m rlhf model=tiny method=sft`, 2-core x86 Linux, bench/plan_estimate.py),
# with the optional libraries it cannot use left out (hardware.lean_imports: bitsandbytes, DeepSpeed, wandb),
# ~0.08 GB more with them (bench/footprint.py --against hardware.lean_imports=false: 77-91 MB in every method).
CPU_FRAMEWORK = 0.7 * GiB
CPU_OPTIONAL_LIBRARIES = 0.08 * GiB


# --------------------------------------------------------------------------- the model's numbers


@dataclass(frozen=True)
class Shape:
    """What the estimate needs of a model, read from its config (the model built on the meta device)."""

    params: int  # every parameter once (tied embeddings once), as rlhf.models.count_params counts them
    linear: tuple[tuple[str, int, int], ...]  # (module name, in, out) of every Linear but the output layer
    lm_head: int  # parameters of the output layer where it is not tied to the input embeddings, else 0
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int

    @property
    def quantizable(self) -> int:
        """What bitsandbytes loads in 4-bit: every Linear's weight but the output layer's (embeddings, norms,
        biases and lm_head stay at the profile's model_dtype)."""
        return sum(i * o for _, i, o in self.linear)

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim


_SHAPES: dict[str, Shape] = {}  # a 7B model takes ~3 s to build on the meta device: once per process


def shape_from(model_config: Any) -> Shape:
    """The Shape of a transformers config."""
    key = model_config.to_json_string(use_diff=False)
    if key not in _SHAPES:
        import torch

        from rlhf.models import meta_model

        model = meta_model(model_config)
        out = model.get_output_embeddings()
        tied = out is not None and out.weight is model.get_input_embeddings().weight
        c = model_config
        h = c.hidden_size
        heads = c.num_attention_heads
        _SHAPES[key] = Shape(
            params=sum(p.numel() for p in model.parameters()),
            linear=tuple(
                (name, m.in_features, m.out_features)
                for name, m in model.named_modules()
                if isinstance(m, torch.nn.Linear) and m is not out
            ),
            lm_head=0 if tied or out is None else out.weight.numel(),
            hidden=h,
            intermediate=getattr(c, "intermediate_size", None) or getattr(c, "n_inner", None) or 4 * h,
            layers=c.num_hidden_layers,
            heads=heads,
            kv_heads=getattr(c, "num_key_value_heads", None) or heads,
            head_dim=getattr(c, "head_dim", None) or h // heads,
            vocab=c.vocab_size,
        )
    return _SHAPES[key]


def model_config(m: DictConfig, cache_dir: str, online: bool = False):
    """The transformers config of a model config, without its weights.

    In order: a local directory's config.json, the Hugging Face cache's, model.architecture (where its hub_id
    is absent or is model.path), the converted GGUF (converted once if need be), and with `online` the hub.
    """
    from transformers import AutoConfig

    from rlhf import hub
    from rlhf.models import sources

    cache = Path(cache_dir).expanduser()
    if m.source == "tiny":
        return sources.config_of(m, cache)
    remote = {"trust_remote_code": m.trust_remote_code}
    if m.source == "pretrained":
        local = Path(m.path).expanduser()
        if (local / "config.json").is_file():
            return AutoConfig.from_pretrained(local, **remote)
        if not hub.looks_local(m.path):
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(m.path, "config.json", revision=m.revision)
            if isinstance(cached, str):
                return AutoConfig.from_pretrained(Path(cached).parent, **remote)
    arch = OmegaConf.to_container(m.architecture) if m.architecture else {}
    if arch and arch.get("hub_id", m.path) == m.path:
        numbers = {k: v for k, v in arch.items() if k not in ("hub_id", "model_type")}
        return AutoConfig.for_model(arch.get("model_type", "llama"), **numbers)
    if m.source == "gguf":
        return sources.config_of(m, cache)
    if online and not hub.looks_local(m.path) and hub.reachable():
        try:
            return AutoConfig.from_pretrained(m.path, revision=m.revision, **remote)
        except OSError as e:
            raise UserError(
                f"model.path={m.path}: its config.json cannot be read ({str(e).strip().splitlines()[0][:120]}); "
                "fix: check the id (gated models also need `hf auth login`), or set model.path to a local directory"
            ) from None
    raise UserError(
        f"model.path={m.path}: its config.json cannot be had offline (not a local model directory, not in the "
        "Hugging Face cache); fix: run once with network access, set model.path to a local model directory, or "
        f"give its numbers as model.architecture={{hub_id:{m.path},model_type:llama,hidden_size:...,"
        "intermediate_size:...,num_hidden_layers:...,num_attention_heads:...,num_key_value_heads:...,vocab_size:...}"
    )


# --------------------------------------------------------------------------- what one step holds


@dataclass(frozen=True)
class Workload:
    """What the method trains, and how many sequences of how many tokens one step holds on a device."""

    method: str
    trains: str  # full | lora | prompt | prefix
    head: str  # causal-lm | sequence-classification (no logits over the vocabulary)
    batch_key: str | None  # the key that sets the per-device batch, None where the algorithm fixes it
    batch: int  # its value
    pairs: int  # sequences per batch row: 2 where chosen and rejected go through in one pass
    tokens: int  # tokens per sequence in the training pass
    logit_tokens: int  # positions whose logits are computed (the completion only, for ppo / grpo / rloo)
    lora_r: int = 0
    targets: Any = "all-linear"
    virtual_tokens: int = 0
    reference: str | None = None  # copy (a frozen copy of the model), adapter (the adapter disabled) or None
    gen_rows: int = 0  # sequences generated at once (ppo / grpo / rloo), 0 for none
    prompt_tokens: int = 0
    new_tokens: int = 0
    accum_key: str | None = None  # the accumulation key that keeps the effective batch when the batch shrinks
    fused_head: bool = True  # the trainer scores the LM head in tiles (TRL's); False: full logits (our ppo)

    @property
    def rows(self) -> int:
        return self.batch * self.pairs


def workload(cfg: DictConfig, hw: HardwareConfig, tokens: int | None = None) -> Workload:
    """The method's workload from its config and its module (what it trains, its data formats, its head).

    `tokens`: the longest row of the data in tokens where it has been measured; else hardware.max_seq_length,
    the longest a row can be (longer rows are truncated or dropped). For ppo / grpo / rloo that is the prompt.
    """
    m = cfg.method
    module = methods.get(m.name)
    kind = module.adapter_kind(m)
    packed = bool(OmegaConf.select(cfg, "data.packing", default=False))
    seq = hw.max_seq_length if tokens is None or packed else min(int(tokens), hw.max_seq_length)
    formats = set(module.DATA_FORMATS)
    common: dict[str, Any] = {
        "method": m.name,
        "trains": kind or "full",
        "head": module.HEAD,
        "lora_r": m.lora_r if kind == "lora" else 0,
        "targets": m.target_modules if kind == "lora" else "all-linear",
        "virtual_tokens": m.num_virtual_tokens if kind in ("prompt", "prefix") else 0,
    }
    if "prompts" in formats:  # ppo / grpo / rloo: generate completions, then train on prompt + completion
        new = m.max_new_tokens
        if "mini_batch_size" in m:  # our ppo: rollouts of batch_size, trained in mini-batches
            batch, key, gen_rows = m.mini_batch_size, "method.mini_batch_size", m.batch_size
        else:  # TRL's: prompts_per_step x num_generations completions, the algorithm's batch
            batch, key = m.prompts_per_step * m.num_generations, None
            gen_rows = batch
        # ppo always scores a reference; grpo / rloo only with a KL term (beta > 0)
        ref = "adapter" if m.get("beta", 1) > 0 else None
        return Workload(
            **common,
            batch_key=key,
            batch=batch,
            pairs=1,
            tokens=seq + new,
            logit_tokens=new + 1,
            reference=ref,
            gen_rows=gen_rows,
            prompt_tokens=seq,
            new_tokens=new,
            fused_head="mini_batch_size" not in m,  # our ppo computes the completion's logits itself
        )
    virtual = common["virtual_tokens"] if kind == "prompt" else 0  # soft prompts lengthen every sequence
    batch_key, accum_key = methods.batch_keys(module)
    sized = {"batch_key": f"hardware.{batch_key}", "batch": getattr(hw, batch_key)}
    sized.update(tokens=seq + virtual, logit_tokens=seq + virtual, accum_key=f"hardware.{accum_key}")
    if formats & methods.PREFERENCE_FORMATS:  # rm / dpo / kto
        # dpo and rm run chosen and rejected through the model in one concatenated pass; dpo / kto compare
        # with a reference: the base with the adapter disabled, or a frozen copy when every weight trains
        pairs = 2 if formats & {"preference", "implicit_preference"} else 1
        ref = None if module.HEAD != "causal-lm" else ("adapter" if kind else "copy")
        return Workload(**common, **sized, pairs=pairs, reference=ref)
    return Workload(**common, **sized, pairs=1)


def optimizer_bytes(optim: str, param_bytes: int) -> float:
    """Bytes of optimizer state per trainable parameter under hardware.optim.

    torch's AdamW (adamw_torch, adamw_torch_fused) keeps exp_avg and exp_avg_sq in the parameter's own dtype: 8
    bytes for float32 parameters (LoRA adapters), 4 for bf16 ones. bitsandbytes' 32-bit optimizers keep float32
    states whatever the parameter (8 bytes for AdamW), its 8-bit ones block-wise 8-bit states (2 bytes; the
    quantile maps are negligible); paged variants hold the same bytes (they can spill to CPU RAM under pressure).
    """
    name = optim.lower()
    if name.startswith(("sgd", "lomo", "adalomo", "adafactor", "galore_adafactor", "schedule_free_sgd")):
        states = 0.0  # transformers' sgd has no momentum; adafactor's factored moments are ~rows + columns
    elif "ademamix" in name:
        states = 3.0
    elif "lion" in name or name.startswith(("rmsprop", "adagrad")):
        states = 1.0
    else:
        states = 2.0
    if "8bit" in name:
        per_state = 1.0
    elif "4bit" in name:
        per_state = 0.5
    elif "32bit" in name or "bnb" in name:
        per_state = 4.0
    else:
        per_state = float(param_bytes)
    return states * per_state


def nf4_bytes(double_quant: bool) -> float:
    """Bytes per 4-bit weight: half a byte, plus one float32 absmax per block of 64; double quantization stores
    the absmax in 8 bits with one float32 per 256 of them (Dettmers et al. 2023, QLoRA)."""
    return 0.5 + (1 / 64 + 4 / (64 * 256) if double_quant else 4 / 64)


# Activation bytes kept for backward per token per decoder layer, as transformers' Llama-family layer keeps
# them under SDPA attention (no sequence x sequence matrix). Counted with torch's saved-tensor hooks on small
# Llamas at four shapes (hidden 256-512, GQA and MHA; transformers 5.23), exact to 1% in float32 and bf16:
#   every weight trains:   r x 6h + m(4i + 2kv) + 8h
#   LoRA on all-linear:    10h + r x 2h + m x 3h + m(4i + 2kv)    frozen linears keep no input
#   frozen base (prompt / prefix tuning):  r x 2h + m(3i + 2kv) + 8h
# h hidden size, i intermediate size, kv = kv heads x head dim; r the residual stream's element size (the
# weights': 4 for float32, 2 for 16-bit), m the matmul outputs' (2 under bf16 / fp16 autocast, else r); 8h is
# the two RMSNorms' float32 copies of their input. LoRA's r x 2h are the norms' outputs that the adapters keep,
# m x 3h the query, sdpa's output and o_proj's contiguous copy of it, and 2h of its 10h what autograd holds
# beyond the named tensors (the adapters' rank-r outputs, 16-bit copies of their weights): recounted with
# bench/activations.py on SmolLM2 (a DPO micro-batch, 560 tokens; machine C) at 20.2h in bf16 and 30.3h in
# float32 beside the i and kv terms, the formula within 1% of both, lean or not. (Its earlier 24h counted the
# float32 copies of the adapters' inputs that rlhf.models.adapter_inputs_follow_autocast removed: 1.09x in bf16,
# 0.92x in float32.) With gradient checkpointing a layer keeps only its input
# (r x h) and one layer's whole set is rebuilt at a time. Lean layers (hardware.lean_layers, rlhf.models.lean)
# keep one intermediate-size tensor fewer in the MLP (its SiLU's output: m x i) and, on a 16-bit residual
# stream, the norms' 16-bit input instead of its float32 copy (8h -> 2 x r x h); tests/test_models.py counts both.
#
# QLoRA whose 4-bit matmuls return another dtype than autocast's (a CPU: bnb_4bit_compute_dtype float32, under
# bf16 autocast; `compute` its element size): the MLP keeps the 4-bit matmuls' outputs at c (gate, up, SiLU's
# output: c x 3i; lean, c x 2i), each adapter keeps its own 16-bit copy of its float32 input (m(5h + i)), sdpa its
# query, key and value repeated to every head, and output (m x 4h), the norms their float32 input (8h). Counted
# by bench/activations.py hardware.load_in_4bit=true on SmolLM2: 31.1 KB a token and a layer, lean, against
# 30.3 here (-2.5%); the LoRA formula's 16-bit sizes gave 19.2.
def layer_bytes_per_token(
    s: Shape, trains: str, r: int, m: int, lean: bool = False, compute: int | None = None
) -> float:
    h, i, kv = s.hidden, s.intermediate, s.kv_dim
    if trains == "lora" and compute is not None and compute != m:
        return 8 * h + compute * (2 if lean else 3) * i + m * (5 * h + i) + m * 4 * h
    fewer = m * i + (8 - 2 * r) * h if lean else 0
    if trains == "full":
        return r * 6 * h + m * (4 * i + 2 * kv) + 8 * h - fewer
    if trains == "lora":
        return 10 * h + r * 2 * h + m * 3 * h + m * (4 * i + 2 * kv) - fewer
    return r * 2 * h + m * (3 * i + 2 * kv) + 8 * h - fewer


# Full logits (our ppo; transformers' own loss): when backward starts, the lm_head's output (m bytes), its
# float32 copy for the loss, the log-softmax and the gradient are all alive: 12 + m bytes per position x
# vocabulary entry (measured, peak RSS of one step at vocab 50k: 4.05 x the 4-byte logits in float32, 3.5 x in
# bf16 and under bf16 autocast).
def logit_bytes(m: int) -> int:
    return 12 + m


# TRL's trainers (sft, dpo, kto, grpo, rloo; TRL 1.16) score the LM head with a fused, tiled log-prob kernel
# (trl/kernels/chunked_logprob.py): the positions x vocabulary logits never exist, only a tile of at most 4096
# positions x 32768 vocabulary entries (its matmul buffer, and as much in float32 temporaries), the head's input
# and its float32 gradient; where the head trains (full fine-tuning), its float32 weight gradient too. A profile
# may set a smaller tile (hardware.head_tile_tokens / head_tile_vocab: the cpu profile's 256 x 4096).
HEAD_TILE = (4096, 32768)


def head_tile(hw: HardwareConfig) -> tuple[int, int]:
    return hw.head_tile_tokens or HEAD_TILE[0], hw.head_tile_vocab or HEAD_TILE[1]


def head_bytes(s: Shape, positions: int, m: int, head_trains: bool, tile_shape: tuple[int, int]) -> float:
    tile = min(positions, tile_shape[0]) * min(s.vocab, tile_shape[1]) * (m + 4)
    return tile + positions * s.hidden * (m + 4) + (s.vocab * s.hidden * 4 if head_trains else 0)


def element_sizes(hw: HardwareConfig) -> tuple[int, int]:
    """(residual stream, matmul outputs) element sizes in bytes under the profile's dtype and precision."""
    r = 2 if DTYPE_BYTES[hw.model_dtype] == 2 else 4
    autocast = hw.precision in ("bf16", "fp16") or (hw.precision == "auto" and hw.device != "cpu")
    return r, 2 if autocast else r


@dataclass(frozen=True)
class Term:
    name: str
    bytes: float
    how: str
    phase: str = ""  # "": held for the whole step; train / generate: the two phases, never at once


@dataclass
class Estimate:
    terms: list[Term]
    shape: Shape
    hw: HardwareConfig
    work: Workload
    engine: str
    num_processes: int
    quantized: bool
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> float:
        """The held terms plus the larger of the two phases (training pass, generation)."""
        held = sum(t.bytes for t in self.terms if not t.phase)
        phases = [sum(t.bytes for t in self.terms if t.phase == p) for p in ("train", "generate")]
        return held + max(phases)

    def largest(self) -> Term:
        return max(self.terms, key=lambda t: t.bytes)


def engine_of(cfg: DictConfig, here: bool = False) -> tuple[str, int | None]:
    """(engine, processes) from the distributed group (none x 1 where the config has none). Processes null
    means one per visible GPU: counted on this machine (`here`), else None (unknown)."""
    engine = str(OmegaConf.select(cfg, "distributed.name", default="none"))
    n = OmegaConf.select(cfg, "distributed.num_processes", default=1)
    if n is None and here:
        import torch

        n = max(1, torch.cuda.device_count())
    return engine, n


def estimate(
    cfg: DictConfig,
    hw: HardwareConfig,
    *,
    engine: str | None = None,
    num_processes: int | None = None,
    tokens: int | None = None,
    online: bool = False,
    here: bool = False,
) -> Estimate:
    """The estimated peak memory per device of the run `cfg` describes on profile `hw`.

    engine: none | ddp | fsdp | deepspeed-zero2 | deepspeed-zero3 | deepspeed-zero3-offload with num_processes
    devices (default: the config's distributed group, else none x 1). tokens: the data's longest row where it
    is known (else hardware.max_seq_length). online: the hub may be asked for a config.json. here: the run is
    on this machine (distributed.num_processes=null counts its GPUs).
    """
    given_engine, given_n = engine_of(cfg, here)
    shape = shape_from(model_config(cfg.model, cfg.cache_dir, online))
    n = num_processes or (given_n if engine is None else 1)
    est = terms(shape, hw, workload(cfg, hw, tokens), engine or given_engine, n or 1)
    if n is None and est.engine != "none":
        est.notes.append(
            "distributed.num_processes=null (one per visible GPU): planned as 1; set distributed.num_processes "
            "to plan for more"
        )
    return est


def terms(shape: Shape, hw: HardwareConfig, w: Workload, engine: str, n: int) -> Estimate:
    """The terms, from the model's shape, the profile and the workload: plain arithmetic, no torch."""
    notes = []
    if engine not in ENGINES:
        notes.append(f"distributed={engine}: no memory model for this engine; estimated as one device")
    n = max(1, n) if engine != "none" else 1
    wbytes = DTYPE_BYTES[hw.model_dtype]
    r, mm = element_sizes(hw)
    gpu = hw.device != "cpu"
    head_params = shape.hidden if w.head != "causal-lm" else 0  # a reward model's score head replaces lm_head
    params = shape.params - (shape.lm_head if w.head != "causal-lm" else 0) + head_params
    # full fine-tuning trains every weight, which 4-bit weights cannot be (the run refuses the combination)
    quantized = hw.load_in_4bit and shape.params / 1e9 >= hw.quantize_min_params_b and w.trains != "full"
    if hw.load_in_4bit and w.trains == "full":
        notes.append(f"hardware.load_in_4bit=true does not apply to method={w.method} (every weight trains)")

    if quantized:
        qbytes = nf4_bytes(hw.bnb_4bit_use_double_quant)
        rest = params - shape.quantizable
        weights = shape.quantizable * qbytes + rest * wbytes
        dq = " + double quant" if hw.bnb_4bit_use_double_quant else ""
        weights_how = (
            f"{count(shape.quantizable)} in 4-bit {hw.bnb_4bit_quant_type}{dq} ({qbytes:.3f} B each) "
            f"+ {count(rest)} embeddings, norms{', lm_head' if shape.lm_head else ''} at {hw.model_dtype}"
        )
    else:
        weights = params * wbytes
        weights_how = f"{count(params)} params at {hw.model_dtype}"

    # root_trains: what FSDP's root group trains (embeddings, output layer, a score head, virtual tokens); the rest is
    # spread evenly over the decoder layers, one group each
    if w.trains == "full":
        trainable, tbytes = params, wbytes
        largest = max([shape.vocab * shape.hidden, *(i * o for _, i, o in shape.linear)])
        root_trains = shape.vocab * shape.hidden + shape.lm_head + head_params
        adapter_how = ""
    elif w.trains == "lora":
        targets = w.targets
        names = None if targets == "all-linear" else [str(t) for t in targets]
        adapted = [
            (i, o)
            for name, i, o in shape.linear
            if names is None or any(name == t or name.endswith(f".{t}") for t in names)
        ]
        trainable = sum(w.lora_r * (i + o) for i, o in adapted) + head_params
        largest = max([head_params, *(w.lora_r * max(i, o) for i, o in adapted)])
        root_trains = head_params
        tbytes = 4  # peft keeps adapter weights in float32 (autocast_adapter_dtype) under bf16 / fp16 bases
        target_text = targets if isinstance(targets, str) else ",".join(names or [])
        adapter_how = f"LoRA r={w.lora_r} on {target_text}: {count(trainable)} params at float32"
    else:  # soft prompts: the virtual tokens' embeddings; prefix tuning: their keys and values at every layer
        per_token = shape.hidden if w.trains == "prompt" else shape.layers * 2 * shape.kv_dim
        trainable, tbytes = w.virtual_tokens * per_token, 4
        largest = root_trains = trainable  # one embedding holds them all
        adapter_how = (
            f"{w.trains} tuning, {w.virtual_tokens} virtual tokens: {count(trainable)} params at float32"
        )

    shards_weights = engine in ("fsdp", *PARTITIONED)
    shards_states = shards_weights or engine == "deepspeed-zero2"
    offload = engine == "deepspeed-zero3-offload"
    wn = n if shards_weights else 1
    sn = n if shards_states else 1
    grads = trainable * tbytes
    grads_how = f"trainable params only, {count(trainable)} x {tbytes} B" + (f" / {sn}" if sn > 1 else "")
    if hw.optimizer_in_backward and engine == "none":  # freed after its update (rlhf.models.in_backward)
        grads = largest * tbytes
        grads_how = (
            f"one weight's at a time (optimizer in backward), the largest {count(largest)} x {tbytes} B"
        )
    elif hw.optimizer_in_backward and engine == "fsdp":
        # FSDP reduces a layer group's gradients into one buffer, whose shards live until their updates
        group = max(root_trains, (trainable - root_trains) / max(1, shape.layers))
        grads = group * tbytes
        grads_how = (
            f"one layer group's at a time (optimizer in backward), the largest {count(group)} x {tbytes} B"
            + (f" / {sn}" if sn > 1 else "")
        )
    opt_per = optimizer_bytes(hw.optim, tbytes)
    if engine.startswith("deepspeed") and tbytes == 2:
        opt_per += 4  # DeepSpeed's optimizer keeps float32 master weights of 16-bit parameters
    optimizer = trainable * opt_per

    # FSDP2 (accelerate) leaves bitsandbytes' byte-packed 4-bit weights out of its shards: each process holds
    # them whole; packed in a float dtype (hardware.bnb_4bit_quant_storage) they are sharded as the rest
    packed_in_bytes = hw.bnb_4bit_quant_storage == "uint8"
    whole = shape.quantizable * qbytes if quantized and engine == "fsdp" and packed_in_bytes else 0
    out = [
        Term(
            "weights",
            0 if offload else whole + (weights - whole) / wn,
            weights_how
            + (", the 4-bit ones whole in each process" if whole and wn > 1 else "")
            + (f", {'the rest ' if whole else ''}sharded over {wn}" if wn > 1 else "")
            + (" (offloaded to CPU)" if offload else ""),
        )
    ]
    if w.trains != "full":
        out.append(Term("adapter", trainable * tbytes / wn, adapter_how))
    out.append(Term("gradients", grads / sn, grads_how))
    out.append(
        Term(
            "optimizer states",
            0 if offload else optimizer / sn,
            f"{hw.optim}: {opt_per:g} B per trainable param"
            + (f" / {sn}" if sn > 1 else "")
            + (" (offloaded to CPU)" if offload else ""),
        )
    )
    if not gpu and "8bit" in hw.optim.lower() and w.trains == "full":
        # bitsandbytes' CPU kernels update a parameter's 8-bit states through float32 temporaries: its first
        # step peaked ~5x the parameter's float32 size above the states (AdamW8bit, a 49152 x 576 embedding:
        # +597 MB with 55 MB of states), so on a small model they outweigh what the 8-bit states save
        largest = max([shape.vocab * shape.hidden] + [i * o for _, i, o in shape.linear])
        out.append(
            Term(
                "8-bit update (CPU)",
                5 * largest * 4,
                f"bitsandbytes' CPU update: float32 temporaries, ~5 x the largest parameter ({count(largest)})",
            )
        )
    if w.reference == "copy":
        out.append(
            Term(
                "reference model",
                0 if offload else params * wbytes / wn,
                f"a frozen copy of the model at {hw.model_dtype}"
                + (f", sharded over {wn}" if wn > 1 else ""),
            )
        )
    elif w.reference == "adapter":
        out.append(Term("reference model", 0, "the base with the adapter disabled: no copy"))
    if engine == "ddp" and n > 1:
        out.append(
            Term("DDP gradient buckets", grads, "DDP's reducer copies the gradients into flat buckets")
        )
    if shards_weights and not whole:
        layer = (weights - (params - shape.quantizable) * wbytes) / max(1, shape.layers)
        out.append(
            Term("gathered layers", 2 * layer, "one layer's full weights gathered, the next prefetched")
        )
    # accelerate shards each decoder layer and then the model itself, whose group (the embeddings, an untied
    # output layer, the final norm) FSDP2 gathers for a whole pass: a forward and its backward, or a rollout
    root = (shape.vocab * shape.hidden + shape.lm_head) * wbytes
    if engine == "fsdp" and wn > 1:
        out.append(
            Term(
                "gathered root",
                root - root / wn,
                "the embeddings" + (" and output layer" if shape.lm_head else "") + " whole for each pass",
            )
        )

    tokens = w.rows * w.tokens
    # make_lean: in TRL's trainers (not our ppo), on a model that is not partitioned
    lean = hw.lean_layers and w.method != "ppo" and engine not in PARTITIONED
    compute = DTYPE_BYTES[hw.bnb_4bit_compute_dtype] if quantized else None
    per_layer = layer_bytes_per_token(shape, w.trains, r, mm, lean, compute)
    if hw.gradient_checkpointing:
        layer_acts = tokens * (shape.layers * r * shape.hidden + per_layer)
        acts_how = "gradient checkpointing: each layer's input + one layer rebuilt"
    else:
        layer_acts = tokens * shape.layers * per_layer
        acts_how = f"{per_layer / 1024:.0f} KiB per token per layer"
    if lean:
        acts_how += " (lean layers)"
    final_norm = (2 * r if lean else 8) * shape.hidden  # its copies, as a layer's norm
    acts = layer_acts + tokens * (r * shape.hidden + final_norm)  # and the embeddings' output
    if r == 4 and mm == 2 and not quantized:
        # autocast over float32 weights: each linear layer's 16-bit copy of its weight is kept for backward
        # (measured: 1.8 MB per row per layer on SmolLM2's shape = its layer's weights at 2 bytes / 4 rows)
        copies = shape.quantizable * 2 / (shape.layers if hw.gradient_checkpointing else 1)
        acts += copies
        acts_how += f", + {gb(copies)} GB of 16-bit weight copies (autocast)"
    elif r == 4 and mm == 2 and quantized and w.head == "causal-lm":
        # the LM head is not quantized: autocast keeps a 16-bit copy of its float32 weight for backward
        copies = shape.vocab * shape.hidden * 2
        acts += copies
        acts_how += f", + {gb(copies)} GB: the LM head's 16-bit copy (autocast)"
    rows_how = f"{w.batch} x {w.pairs}" if w.pairs > 1 else f"{w.batch}"
    out.append(Term("activations", acts, f"{rows_how} rows x {w.tokens} tokens; {acts_how}", "train"))
    if w.head == "causal-lm" and w.fused_head:
        positions = w.rows * w.logit_tokens
        tile = head_tile(hw)
        out.append(
            Term(
                "LM head (tiled)",
                head_bytes(shape, positions, mm, w.trains == "full", tile),
                f"TRL's fused log-probs: tiles of {min(positions, tile[0])} x {min(shape.vocab, tile[1]):,} "
                "vocab, never the full logits",
                "train",
            )
        )
    elif w.head == "causal-lm":
        out.append(
            Term(
                "logits",
                w.rows * w.logit_tokens * shape.vocab * logit_bytes(mm),
                f"{w.rows} x {w.logit_tokens} x {shape.vocab:,} vocab x {logit_bytes(mm)} B "
                "(logits, their float32 copy, log-softmax, gradient)",
                "train",
            )
        )
    if w.gen_rows:
        length = w.prompt_tokens + w.new_tokens
        kv = w.gen_rows * length * shape.layers * 2 * shape.kv_dim * mm
        out.append(
            Term(
                "generation KV cache",
                kv,
                f"{w.gen_rows} x {length} tokens x {shape.layers} layers x 2 x {shape.kv_dim} x {mm} B",
                "generate",
            )
        )
        if engine.startswith("deepspeed-zero3") and wn > 1:
            # ppo, and TRL's trainers (ds3_gather_for_generation), sample from the whole weights in each process
            out.append(
                Term(
                    "weights gathered to sample",
                    weights - (0 if offload else weights / wn),
                    f"every shard of the weights gathered onto each {'GPU' if gpu else 'process'} for generation",
                    "generate",
                )
            )
        elif engine == "fsdp" and wn > 1 and w.method == "ppo":
            # ppo gathers every layer once for a rollout (rlhf.models.partitioned.whole_layers); the root's
            # group is the gathered root above; TRL's trainers gather layer by layer at each decoding step
            layers = weights - whole - root
            out.append(
                Term(
                    "weights gathered to sample",
                    layers - layers / wn,
                    f"every layer's shards gathered onto each {'GPU' if gpu else 'process'} for a rollout",
                    "generate",
                )
            )
        out.append(
            Term(
                "rollout scoring",
                w.gen_rows * (w.new_tokens + 1) * shape.vocab * 8,
                f"log-probs of {w.gen_rows} completions without gradients (float32 logits + log-softmax)",
                "generate",
            )
        )
    if gpu:
        overhead = CUDA_CONTEXT + (NCCL_BUFFERS if n > 1 else 0)
        out.append(
            Term(
                "CUDA context + framework",
                overhead,
                "context, kernels, workspaces" + (", NCCL" if n > 1 else ""),
            )
        )
    else:
        out.append(
            Term(
                "framework",
                CPU_FRAMEWORK + (0 if hw.lean_imports else CPU_OPTIONAL_LIBRARIES),
                "Python with torch, transformers, TRL, peft, datasets"
                + (
                    " (unused optional libraries left out)"
                    if hw.lean_imports
                    else ", bitsandbytes, DeepSpeed, wandb"
                ),
            )
        )
    if offload:
        notes.append(
            f"deepspeed-zero3-offload holds {(weights + optimizer + (params * wbytes if w.reference == 'copy' else 0)) / GiB:.1f} "
            "GB of weights and optimizer states in CPU RAM"
        )
    return Estimate(out, shape, hw, w, engine, n, quantized, notes)


# --------------------------------------------------------------------------- the verdict


def ram_gb() -> float:
    """This machine's RAM in GiB, or its cgroup's memory limit where that is lower (a container)."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit.isdigit():
            total = min(total, int(limit))
    except OSError:
        pass
    return total / GiB


def device_memory(hw: HardwareConfig, here: bool) -> tuple[float, str]:
    """(GiB, what it is) that the estimate is compared with: on the machine itself (`here`) its GPU's own
    memory, else the profile's memory_gb; for a cpu profile without memory_gb, the machine's RAM."""
    if hw.device != "cpu":
        seen = hardware.gpu() if here else None
        if seen is not None:
            return seen["memory_gb"], f"this GPU's ({seen['name']})"
        if hw.memory_gb is None:
            raise UserError(
                f"hardware.memory_gb=null: hardware={hw.name} is a GPU profile and the plan needs its memory; "
                "fix: set hardware.memory_gb to the GPU's memory in GiB, e.g. hardware.memory_gb=24"
            )
        return hw.memory_gb, f"hardware={hw.name}'s memory_gb"
    if hw.memory_gb is not None:
        return hw.memory_gb, "hardware.memory_gb"
    return ram_gb(), "this machine's RAM"


def gb(value: float) -> str:
    return f"{value / GiB:.1f}"


def count(n: float) -> str:
    """A parameter count as people write it: 3.21B, 135.0M, 12.3K."""
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.{2 if unit == 'B' else 1}f}{unit}"
    return str(int(n))


def _lora_defaults() -> tuple[int, Any]:
    """method=lora's rank and targets, from its YAML: what `method=lora` as a fix would train."""
    node = OmegaConf.load(config.CONF / "method" / "lora.yaml")
    return int(node.lora_r), node.target_modules


def fixes(est: Estimate, budget: float) -> list[tuple[str, str, Estimate]]:
    """The changes that could bring the estimate under `budget` bytes, cheapest first, each re-estimated:
    a smaller batch (with more accumulation: the same effective batch), gradient checkpointing, 4-bit weights,
    a LoRA adapter instead of every weight, then sharding over more GPUs (DeepSpeed ZeRO-3, then with CPU
    offload). A batch or a GPU count is the least that fits, else the most this list offers. Each entry:
    (kind, the overrides, the estimate with them)."""
    hw, w, shape, engine, n = est.hw, est.work, est.shape, est.engine, est.num_processes
    out: list[tuple[str, str, Estimate]] = []
    # the optimizer in backward takes no accumulation (a smaller batch would be another run) and no DeepSpeed
    in_backward = " hardware.optimizer_in_backward=false" if hw.optimizer_in_backward else ""
    if w.batch_key and w.batch > 1 and not in_backward:
        sizes = list(range(w.batch - 1, 0, -1))
        if w.batch_key == "method.mini_batch_size":  # must divide method.batch_size
            sizes = [b for b in sizes if w.gen_rows % b == 0]
        for b in sizes:
            key = w.batch_key.split(".")[1]
            profile = dataclasses.replace(hw, **{key: b}) if w.batch_key.startswith("hardware.") else hw
            trial = terms(shape, profile, dataclasses.replace(w, batch=b), engine, n)
            if trial.total <= budget or b == sizes[-1]:
                text = f"{w.batch_key}={b}"
                if w.accum_key:
                    accum_key = w.accum_key.split(".")[1]
                    accum = math.ceil(w.batch * getattr(hw, accum_key) / b)
                    text += f" {w.accum_key}={accum}"
                    trial.hw = dataclasses.replace(trial.hw, **{accum_key: accum})
                out.append(("batch", text, trial))
                break
    if not hw.gradient_checkpointing and w.trains != "prefix":  # prefix tuning cannot run checkpointed
        profile = dataclasses.replace(hw, gradient_checkpointing=True)
        out.append(
            ("checkpointing", "hardware.gradient_checkpointing=true", terms(shape, profile, w, engine, n))
        )
    if not est.quantized and w.trains != "full":
        text = "hardware.load_in_4bit=true"
        changes: dict[str, Any] = {"load_in_4bit": True}
        if shape.params / 1e9 < hw.quantize_min_params_b:
            text += " hardware.quantize_min_params_b=0"
            changes["quantize_min_params_b"] = 0.0
        out.append(("4-bit", text, terms(shape, dataclasses.replace(hw, **changes), w, engine, n)))
    if w.trains == "full":
        if w.method == "sft":  # the LoRA variant of SFT is its own method
            (r, targets), text = _lora_defaults(), "method=lora"
        else:  # rm / dpo / kto train LoRA unless method.adapter=none
            r, targets, text = w.lora_r or _lora_defaults()[0], w.targets, "method.adapter=lora"
        ref = "adapter" if w.reference else None
        lora = dataclasses.replace(w, trains="lora", lora_r=r, targets=targets, reference=ref)
        out.append(("lora", text, terms(shape, hw, lora, engine, n)))
    if engine not in ("fsdp", *PARTITIONED):
        for k in GPU_COUNTS:
            trial = terms(shape, hw, w, "deepspeed-zero3", k)
            if trial.total <= budget or k == GPU_COUNTS[-1]:
                text = f"distributed=deepspeed-zero3 distributed.num_processes={k}{in_backward}"
                out.append(("zero3", text, trial))
                break
    if engine != "deepspeed-zero3-offload":
        k = max(n, 1)
        count = f" distributed.num_processes={k}" if k > 1 else ""
        out.append(
            (
                "offload",
                f"distributed=deepspeed-zero3-offload{count}{in_backward}",
                terms(shape, hw, w, "deepspeed-zero3-offload", k),
            )
        )
    return out


# the changes to this machine's run, cheapest first; in a combination the batch goes last, so that it is the
# largest that fits once the others have made room
LOCAL = ("batch", "checkpointing", "4-bit", "lora")
COMBINED_ORDER = ("checkpointing", "4-bit", "lora", "zero3", "batch")


def cheapest_fix(est: Estimate, budget: float) -> str:
    """What brings the estimate under `budget`, cheapest first: one change to this machine's run (in LOCAL's
    order), else the fewest of them together, else sharding over more GPUs (ZeRO-3, then ZeRO-3 with CPU
    offload), else sharding with the fewest of them."""
    options = fixes(est, budget)
    for kinds in (
        [(k,) for k in LOCAL] + subsets(LOCAL, 2) + [("zero3",), ("offload",)] + subsets(LOCAL, 1, "zero3")
    ):
        found = combine(est, budget, kinds, options)
        if found:
            return found
    return "nothing this plan knows fits; use a GPU with more memory (e.g. hardware=h100) or a smaller model"


def subsets(kinds: tuple[str, ...], least: int, plus: str | None = None) -> list[tuple[str, ...]]:
    """The combinations of `kinds` of `least` or more, fewest first (each with `plus` added)."""
    extra = (plus,) if plus else ()
    return [c + extra for size in range(least, len(kinds) + 1) for c in itertools.combinations(kinds, size)]


def combine(
    est: Estimate, budget: float, kinds: tuple[str, ...], options: list[tuple[str, str, Estimate]]
) -> str | None:
    """These fixes applied one after the other (COMBINED_ORDER), re-planning from the changed run each time:
    their overrides and estimate where they fit, else None (also where one of them does not apply)."""
    if len(kinds) == 1:
        match = [(t, e) for k, t, e in options if k == kinds[0]]
        if match and match[0][1].total <= budget:
            return f"{match[0][0]} (est. {gb(match[0][1].total)} GB)"
        return None
    applied, current = [], est
    for kind in sorted(kinds, key=COMBINED_ORDER.index):
        match = [(t, e) for k, t, e in fixes(current, budget) if k == kind]
        if not match:
            return None
        text, current = match[0]
        applied.append(text)
    if current.total <= budget:
        return f"{' '.join(applied)} (est. {gb(current.total)} GB)"
    return None


def verdict(est: Estimate, limit_gb: float, where: str, model: str) -> str:
    """'fits: X of Y GB', or the warning above 90% of the device; a UserError when it does not fit."""
    limit = limit_gb * GiB
    total = est.total
    w = est.work
    what = f"model={model} method={w.method}"
    known = est.engine in ENGINES
    if total > limit and known:
        largest = est.largest()
        raise UserError(
            f"hardware={est.hw.name}: {what} needs an estimated {gb(total)} GB per device, more than the "
            f"{limit_gb:.1f} GB of {where} (largest term: {largest.name}, {gb(largest.bytes)} GB); "
            f"fix: {cheapest_fix(est, limit)}"
        )
    if total > WARN_AT * limit:
        return (
            f"warning: hardware={est.hw.name}: {what} needs an estimated {gb(total)} of {limit_gb:.1f} GB per "
            f"device ({100 * total / limit:.0f}%), little room for the allocator's fragmentation; if it runs out of "
            f"memory: {cheapest_fix(est, WARN_AT * limit)}"
        )
    return f"fits: {gb(total)} of {limit_gb:.1f} GB ({where})"


def check(cfg: DictConfig, hw: HardwareConfig, tokens: int | None = None) -> None:
    """Before weights load: refuse a run whose estimate exceeds the device (a UserError of one line naming the
    largest term and the cheapest fix), warn above 90%; nothing with plan.check=false.

    hw: the resolved profile (rlhf.config.resolve_hardware). tokens: the data's longest row in tokens, where
    the run has measured it (else hardware.max_seq_length bounds it).
    """
    if not cfg.plan.check:
        return
    est = estimate(cfg, hw, tokens=tokens, online=True, here=True)
    limit, where = device_memory(hw, here=True)
    line = verdict(est, limit, where, cfg.model.name)
    if line.startswith("warning:"):
        print(line, file=sys.stderr)


# --------------------------------------------------------------------------- the table


def table(est: Estimate, model: str) -> str:
    """The estimate as the lines `python -m rlhf.plan` prints."""
    w, hw, s = est.work, est.hw, est.shape
    trains = {
        "full": "every weight",
        "lora": f"LoRA r={w.lora_r}",
        "prompt": "a soft prompt",
        "prefix": "a prefix",
    }
    lines = [
        f"plan: model={model} ({count(s.params)} params), method={w.method} (trains {trains[w.trains]}), "
        f"hardware={hw.name}, engine={est.engine} x {est.num_processes}",
    ]
    if w.gen_rows:
        lines.append(
            f"  one step: generate {w.gen_rows} completions of {w.new_tokens} tokens after prompts of up to "
            f"{w.prompt_tokens}, then train on {w.rows} at a time"
        )
    else:
        batch = f"{w.batch_key}={w.batch}" if w.batch_key else f"batch {w.batch}"
        pairs = " x 2: chosen and rejected" if w.pairs > 1 else ""
        lines.append(
            f"  one step: {w.rows} x {w.tokens} tokens ({batch}{pairs}; rows of up to "
            f"hardware.max_seq_length={hw.max_seq_length} tokens)"
        )
    width = max(len(t.name) for t in est.terms) + 2
    lines.append("")
    lines.append(f"  {'term':<{width}}{'GB':>7}   how")
    for t in est.terms:
        phase = {"train": " [training pass]", "generate": " [generation]"}.get(t.phase, "")
        lines.append(f"  {t.name:<{width}}{t.bytes / GiB:>7.2f}   {t.how}{phase}")
    phases = "; the training pass and generation never overlap: the larger counts" if w.gen_rows else ""
    lines.append(f"  {'total':<{width}}{est.total / GiB:>7.2f}   per device{phases}")
    for note in est.notes:
        lines.append(f"  note: {note}")
    return "\n".join(lines)


def sharding_line(est: Estimate) -> str:
    """The total per GPU under each engine at 2, 4 and 8 GPUs: what sharding buys."""
    parts = []
    for engine in SHARDED:
        totals = [terms(est.shape, est.hw, est.work, engine, k).total for k in GPU_COUNTS]
        parts.append(f"{engine} {' / '.join(gb(t) for t in totals)}")
    counts = " / ".join(str(k) for k in GPU_COUNTS)
    return f"  per GPU with {counts} GPUs: " + ", ".join(parts)

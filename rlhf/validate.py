"""`validate(cfg)`: every problem in the composed config, all at once, before torch is imported.

The rules of each group live here, except a method's own keys, whose rules are its module's `validate`
(rlhf/methods/). The cross-group rules (hardware x method, export x method) are the few at the end. Each
problem reads `key=value: rule; fix: what to do`.

Choices whose lists belong to a library (schedulers, optimizers, loss types, the model's module names)
are checked by `rlhf.choices` after this, still before any weights load.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from rlhf import data, distributed, methods, monitor
from rlhf.errors import Problems
from rlhf.hub import looks_local
from rlhf.methods._common import check_training
from rlhf.tracking import has_api_key

MODEL_SOURCES = ("pretrained", "gguf", "tiny")
DEVICES = ("cpu", "cuda", "auto")
PRECISIONS = ("fp32", "bf16", "fp16", "auto")
DTYPES = ("float32", "bfloat16", "float16")
QUANT_TYPES = ("nf4", "fp4")
# hardware.optim values (transformers' names, by prefix) whose update of a weight reads only that weight's
# gradient and state: hardware.optimizer_in_backward can run them one weight at a time
PER_WEIGHT = ("adamw_torch", "adafactor", "sgd", "adagrad", "rmsprop", "lion", "ademamix")  # torchao's too
PER_WEIGHT += ("paged_", "adamw_bnb", "adamw_8bit")  # bitsandbytes'


def validate(cfg: DictConfig) -> None:
    """Collect every problem in the composed config and raise them together (a ConfigError)."""
    p = Problems()
    p.check(cfg.seed >= 0, "seed", cfg.seed, "must be >= 0", "use a non-negative integer, e.g. seed=42")
    c = cfg.checkpoint
    p.check(
        c.every is None or c.every >= 0,
        "checkpoint.every",
        c.every,
        "must be >= 0",
        "use null (the profile's), 0 (none while training) or a step count",
    )
    p.check(
        c.keep is None or c.keep >= 1,
        "checkpoint.keep",
        c.keep,
        "must be >= 1",
        "use null (the profile's) or e.g. 2",
    )
    p.positive("samples.max_new_tokens", cfg.samples.max_new_tokens, "64")

    m = cfg.model
    p.one_of("model.source", m.source, MODEL_SOURCES)
    if m.source == "pretrained" and looks_local(m.path):
        p.check(
            (Path(m.path).expanduser() / "config.json").is_file(),
            "model.path",
            m.path,
            "not a model directory (no config.json)",
            "give a directory saved by save_pretrained, or a hub id such as Qwen/Qwen2.5-3B",
        )
    if m.source == "gguf":
        p.check(
            bool(m.gguf_file),
            "model.gguf_file",
            m.gguf_file,
            "empty",
            "name the .gguf file inside the package",
        )

    t = cfg.method
    method = methods.get(t.name)
    check_training(t, p)
    method.validate(t, p)
    monitor.check(cfg.monitor, t.name, getattr(method, "SIGNALS", {}), p)

    e = cfg.eval
    p.check(
        e.limit is None or e.limit > 0, "eval.limit", e.limit, "must be positive", "use null (all) or e.g. 50"
    )
    p.check(
        e.num_fewshot is None or e.num_fewshot >= 0,
        "eval.num_fewshot",
        e.num_fewshot,
        "must be >= 0",
        "use null or 0",
    )
    p.positive("eval.batch_size", e.batch_size, "16")

    h = cfg.hardware
    p.one_of("hardware.device", h.device, DEVICES)
    p.one_of("hardware.precision", h.precision, PRECISIONS)
    p.one_of("hardware.model_dtype", h.model_dtype, (*DTYPES, "auto"))
    p.one_of("hardware.bnb_4bit_compute_dtype", h.bnb_4bit_compute_dtype, DTYPES)
    p.one_of("hardware.bnb_4bit_quant_type", h.bnb_4bit_quant_type, QUANT_TYPES)
    p.one_of("hardware.bnb_4bit_quant_storage", h.bnb_4bit_quant_storage, ("uint8", *DTYPES))
    for key in ("sft_batch_size", "sft_grad_accum", "pref_batch_size", "pref_grad_accum", "checkpoint_keep"):
        p.positive(f"hardware.{key}", h[key], "4")
    for key in ("head_tile_tokens", "head_tile_vocab"):
        p.check(h[key] >= 0, f"hardware.{key}", h[key], "must be >= 0", "use 0 (TRL's tile) or e.g. 256")
    p.check(
        h.max_seq_length >= 16, "hardware.max_seq_length", h.max_seq_length, "must be >= 16", "use e.g. 512"
    )
    p.check(
        h.quantize_min_params_b >= 0,
        "hardware.quantize_min_params_b",
        h.quantize_min_params_b,
        "must be >= 0",
        "use 0 to quantize every model",
    )
    p.check(
        not (h.device == "cpu" and h.precision == "fp16"),
        "hardware.precision",
        h.precision,
        "fp16 mixed precision needs a GPU",
        "on cpu use fp32, bf16 or auto",
    )
    p.check(
        not (h.optim.startswith("paged_") and h.device == "cpu"),
        "hardware.optim",
        h.optim,
        "paged optimizers need CUDA",
        "on cpu use hardware.optim=adamw_torch",
    )

    r = cfg.reward
    p.one_of("reward.name", r.name, ("keyword", "model", "mix"))
    if r.name == "mix":
        p.check(
            len(r.components) == len(r.weights) > 0,
            "reward.weights",
            list(r.weights),
            f"needs one weight per component of reward.components={list(r.components)}",
            "give as many weights as components, e.g. reward.weights=[1.0,0.5]",
        )

    d = cfg.data
    p.one_of("data.format", d.format, ("auto", *data.FORMATS))
    p.one_of("data.too_long", d.too_long, ("auto", "truncate", "drop"))
    p.check(
        d.columns is None
        or (isinstance(d.columns, DictConfig) and all(isinstance(v, str) and v for v in d.columns.values())),
        "data.columns",
        d.columns,
        "must map source columns to format keys",
        "write data.columns={question:prompt,answer:completion}",
    )
    packs = [n for n, mod in methods.registry().items() if getattr(mod, "PACKING", False)]
    p.check(
        not d.packing or getattr(method, "PACKING", False),
        "data.packing",
        d.packing,
        f"method={t.name} does not train on packed rows",
        f"set data.packing=false, or use {' / '.join(f'method={n}' for n in packs)}",
    )
    p.check(
        0 <= d.eval_fraction < 1,
        "data.eval_fraction",
        d.eval_fraction,
        "must be in [0, 1)",
        "use e.g. 0.1 (a tenth of the rows held out) or 0 (none)",
    )
    given = [f"data.{k}={d[k]}" for k in ("eval_path", "eval_split", "eval_fraction") if d[k]]
    p.check(
        len(given) <= 1,
        "data.eval_path",
        d.eval_path,
        f"held-out rows come from one place, not {' and '.join(given)}",
        "keep one of data.eval_path / data.eval_split / data.eval_fraction (set the others to '' or 0)",
    )
    p.check(
        d.max_samples >= 0,
        "data.max_samples",
        d.max_samples,
        "must be >= 0",
        "use 0 (all rows) or a row count",
    )

    if cfg.logger.name == "wandb":
        p.one_of("logger.mode", cfg.logger.mode, ("auto", "offline", "online"))
        p.check(
            cfg.logger.mode != "online" or has_api_key(),
            "logger.mode",
            cfg.logger.mode,
            "no wandb API key (WANDB_API_KEY, or a netrc entry that `wandb login` writes)",
            "run `wandb login` or set WANDB_API_KEY; logger.mode=auto runs offline without a key",
        )

    check_method_and_profile(cfg, h, p)
    p.raise_if_any()


def check_method_and_profile(cfg: DictConfig, h, p: Problems) -> None:
    """The cross-group rules: what the method trains against the hardware profile and the export, and the
    method's own rules on the profile (its optional `check_hardware`). `validate` applies them to the composed
    profile; the run applies them again to the profile hardware=auto picks (rlhf.train), since a GPU profile
    can differ from the cpu one auto composes with (t4 checkpoints, rtx4060-8gb has a batch of 1)."""
    t = cfg.method
    method = methods.get(t.name)
    kind = method.adapter_kind(t)
    p.check(
        not cfg.export.merge or kind == "lora",
        "export.merge",
        cfg.export.merge,
        f"method={t.name} trains no LoRA adapter to merge",
        "drop export.merge (model/ already loads on its own), or train LoRA (method=lora)",
    )
    p.check(
        not (h.precision == "fp16" and h.model_dtype == "float16" and kind is None),
        "hardware.model_dtype",
        h.model_dtype,
        "full fine-tuning with fp16 needs float32 master weights",
        "set hardware.model_dtype=float32",
    )
    p.check(
        not (h.load_in_4bit and kind is None),
        "hardware.load_in_4bit",
        h.load_in_4bit,
        "4-bit weights cannot be fully fine-tuned",
        "train a LoRA adapter (method=lora, or method.adapter=lora) or set hardware.load_in_4bit=false",
    )
    p.check(
        not (cfg.model.attn_implementation == "flex_attention" and h.device == "cpu"),
        "model.attn_implementation",
        cfg.model.attn_implementation,
        "on a CPU torch compiles flex attention into C++ that does not compile (torch 2.13: the first forward "
        "ends in inductor's CppCompileError)",
        "use sdpa (the default) or eager on a CPU; flex_attention on a GPU profile",
    )
    if hasattr(method, "check_hardware"):
        method.check_hardware(t, h, p)
    distributed.check(cfg, h, p)  # the method under the engine in effect (the preset's, or the launch's)
    if h.optimizer_in_backward:
        check_in_backward(cfg, h, p)


def check_in_backward(cfg: DictConfig, h, p: Problems) -> None:
    """hardware.optimizer_in_backward=true (rlhf.models.in_backward): what a step cannot do once each weight
    is updated in backward, as soon as its gradient is whole."""
    t = cfg.method
    why = "hardware.optimizer_in_backward=true updates each weight in backward"
    off = "hardware.optimizer_in_backward=false"
    p.check(
        t.name not in distributed.OWN_LOOP,
        "method",
        t.name,
        f"{why}, through the trainer's optimizer: method={t.name} steps its own in its own loop",
        f"set {off}",
    )
    p.check(
        t.max_grad_norm == 0,
        "method.max_grad_norm",
        t.max_grad_norm,
        f"{why}, before the next gradient exists: nothing can clip by the norm of all of them",
        f"set method.max_grad_norm=0 (no clipping), or {off}",
    )
    keys = methods.batch_keys(methods.get(t.name))
    if keys is not None:
        batch, accum = (getattr(h, key) for key in keys)  # h: the composed node, or the resolved profile
        p.check(
            accum == 1,
            f"hardware.{keys[1]}",
            accum,
            f"{why}, at every micro-batch: gradients cannot accumulate",
            f"set hardware.{keys[1]}=1 (with hardware.{keys[0]}={batch * accum}: the same batch), or {off}",
        )
    p.check(
        h.precision != "fp16",
        "hardware.precision",
        h.precision,
        f"{why}: fp16's loss scaler must see every gradient before any update",
        f"use bf16 or fp32, or {off}",
    )
    name, engine, _ = distributed.in_effect(cfg)
    p.check(
        engine in ("none", "fsdp"),  # FSDP2 runs the hooks on each shard once its gradients are reduced
        "distributed",
        name,
        f"{why}: under {name} each process would update before the gradients are averaged across processes",
        f"use distributed=fsdp (it runs the update after the reduction) or distributed=none, or {off}",
    )
    p.check(
        h.optim.startswith(PER_WEIGHT),  # no layerwise (GaLore, APOLLO) name starts with one
        "hardware.optim",
        h.optim,
        f"{why}, one weight at a time: this optimizer's step is not known to update each weight on its own "
        "(schedule-free ones count steps per group; lomo, adalomo and GaLore's layerwise ones step in backward "
        "themselves)",
        f"use adamw_torch_fused, adafactor, sgd or a bitsandbytes optimizer, or set {off}",
    )


def check_resolved_profile(cfg: DictConfig, hw) -> None:
    """The cross-group rules again, on the profile the run resolved (hardware=auto's pick), raised at once."""
    p = Problems()
    check_method_and_profile(cfg, hw, p)
    p.raise_if_any()

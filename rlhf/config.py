"""Config schemas (types only) and `validate(cfg)`.

Values live in the YAML files under conf/; the dataclasses here give every key its type, so Hydra rejects a
mistyped key or a wrong type on the command line and in YAML. A field that has a default here is optional
and the YAMLs leave it out unless they change it; a field marked MISSING must be set by every option of its
group. `validate` then collects the cross-field errors, all at once, before anything heavy is imported.

This module imports nothing heavier than OmegaConf: `python -m rlhf --cfg job` must stay fast.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from rlhf.errors import ConfigError
from rlhf.tracking import has_api_key

# --------------------------------------------------------------------------- schemas


@dataclass
class ModelConfig:
    name: str = MISSING  # short name, used in run directory names
    # pretrained: `path` is a hub id or a local directory
    # gguf: `path` is an installed Python package that ships the GGUF file `gguf_file`
    # tiny: a randomly initialised Llama built from `architecture` with the tokenizer in rlhf/assets
    source: str = MISSING
    path: str = MISSING
    gguf_file: str = ""
    install_hint: str = ""  # the command that installs `path` when source=gguf
    revision: str = "main"
    trust_remote_code: bool = False
    architecture: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainingConfig:
    """Keys shared by every method that runs an optimiser."""

    name: str = MISSING
    learning_rate: float = MISSING
    num_epochs: float = MISSING
    max_steps: int = 0  # > 0 overrides num_epochs
    lr_scheduler_type: str = "linear"
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    logging_steps: int = 1


@dataclass
class SFTMethodConfig(TrainingConfig):
    pass


@dataclass
class LoraMethodConfig(TrainingConfig):
    lora_r: int = MISSING
    lora_alpha: int = MISSING
    lora_dropout: float = MISSING
    target_modules: Any = MISSING  # "all-linear" or a list of module names


@dataclass
class RewardModelMethodConfig(LoraMethodConfig):
    adapter: str = MISSING  # lora | none (full fine-tuning)


@dataclass
class DPOMethodConfig(RewardModelMethodConfig):
    beta: float = MISSING
    loss_type: str = MISSING  # sigmoid | ipo | hinge | robust | ... (TRL's DPO loss types)


@dataclass
class SamplingFields:
    max_new_tokens: int = MISSING
    temperature: float = MISSING
    top_k: int = MISSING  # 0 = off
    top_p: float = MISSING


@dataclass
class GRPOMethodConfig(LoraMethodConfig, SamplingFields):
    beta: float = MISSING  # KL coefficient to the reference (the base with the adapter disabled)
    num_generations: int = MISSING  # completions per prompt; the group the advantages are computed in
    prompts_per_step: int = MISSING


@dataclass
class PromptTuningMethodConfig(TrainingConfig):
    num_virtual_tokens: int = MISSING
    prompt_tuning_init_text: str = MISSING  # "" initialises the virtual tokens randomly


@dataclass
class HardwareConfig:
    name: str = MISSING
    device: str = MISSING  # cpu | cuda | auto
    precision: str = MISSING  # fp32 | bf16 | fp16 | auto (bf16 where the device has it, else fp32)
    tf32: bool = MISSING
    model_dtype: str = MISSING  # float32 | bfloat16 | float16: the dtype the weights are loaded in
    load_in_4bit: bool = MISSING
    quantize_min_params_b: float = MISSING  # 4-bit only for models at least this large (billions)
    bnb_4bit_quant_type: str = MISSING
    bnb_4bit_use_double_quant: bool = MISSING
    bnb_4bit_compute_dtype: str = MISSING
    sft_batch_size: int = MISSING
    sft_grad_accum: int = MISSING
    pref_batch_size: int = MISSING  # rm / dpo
    pref_grad_accum: int = MISSING
    gradient_checkpointing: bool = MISSING
    optim: str = MISSING
    max_seq_length: int = MISSING
    dataloader_num_workers: int = 0


@dataclass
class DataConfig:
    name: str = MISSING
    path: str = MISSING  # a shipped set (rlhf/datasets/<path>.jsonl), a local .json/.jsonl file, or a hub id
    eval_path: str = ""  # a held-out set in the same format (rm reports pairwise accuracy on it)
    format: str = "auto"  # auto | alpaca | chat | question_decomposition | prompts | preference
    split: str = "train"  # hub data sets only
    max_samples: int = 0  # 0 = all rows
    sample_prompts: list[str] = field(default_factory=list)  # fixed prompts for samples.jsonl
    decomposition_instruction: str = "Break this question into simpler sub-questions:"


@dataclass
class RewardConfig:
    name: str = MISSING  # keyword | model | mix
    # keyword (also inside mix): the target words, seed 000's list unless set
    words: list[str] = field(
        default_factory=lambda: ["happy", "glad", "good", "great", "smile", "joy", "love"]
    )
    model_path: str = ""  # model: a method=rm run's model/ directory, or a sequence-classification model
    components: list[str] = field(default_factory=list)  # mix: reward names, e.g. [keyword, model]
    weights: list[float] = field(default_factory=list)  # mix: one weight per component


@dataclass
class EvalConfig:
    name: str = MISSING
    tasks: list[str] = MISSING  # lm-eval task names: ours (rlhf_*, rlhf/tasks/) or lm-eval's registry
    limit: int | None = MISSING  # items per task; null = every item
    batch_size: int = MISSING
    num_fewshot: int | None = MISSING  # null = each task's own setting
    apply_chat_template: bool = MISSING  # prompts in the model's chat format, as training formats them


@dataclass
class ExportConfig:
    merge: bool = MISSING  # also write merged/: the LoRA adapter folded into full weights


@dataclass
class LoggerConfig:
    name: str = MISSING


@dataclass
class WandbLoggerConfig(LoggerConfig):
    project: str = MISSING
    entity: str | None = MISSING  # None: the API key's default entity
    mode: str = MISSING  # auto (online with an API key, else offline) | offline | online
    tags: list[str] = MISSING


@dataclass
class SamplesConfig:
    max_new_tokens: int = MISSING


@dataclass
class RootConfig:
    seed: int = MISSING
    cache_dir: str = MISSING
    optimize_metric: str = MISSING  # the summary.json key the run returns to a sweeper (nested: eval.<key>)
    samples: SamplesConfig = field(default_factory=SamplesConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    # each group's node is typed by its own schema (see the YAML's defaults list)
    model: Any = MISSING
    method: Any = MISSING
    hardware: Any = MISSING
    reward: Any = MISSING
    data: Any = MISSING
    eval: Any = MISSING
    logger: Any = MISSING


@dataclass
class PPOMethodConfig(LoraMethodConfig, SamplingFields):
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


METHOD_SCHEMAS = {
    "sft": SFTMethodConfig,
    "lora": LoraMethodConfig,
    "prompt_tuning": PromptTuningMethodConfig,
    "rm": RewardModelMethodConfig,
    "dpo": DPOMethodConfig,
    "grpo": GRPOMethodConfig,
    "ppo": PPOMethodConfig,
}


def if_path(path: str, when: str, value: int) -> int:
    """`${rlhf.if_path:${.path},instructions,80}`: value when data.path is `when`, else 0 (for max_samples).

    The shipped instruction set trains on its first rows by default; a user's own file (data.path=...) on
    every row.
    """
    return value if path == when else 0


def register_schemas() -> None:
    OmegaConf.register_new_resolver("rlhf.if_path", if_path, replace=True)
    cs = ConfigStore.instance()
    cs.store(name="root_schema", node=RootConfig)
    for group, node in [
        ("model", ModelConfig),
        ("hardware", HardwareConfig),
        ("data", DataConfig),
        ("reward", RewardConfig),
        ("eval", EvalConfig),
        ("logger", LoggerConfig),
    ]:
        cs.store(group=f"schema/{group}", name="base", node=node)
    cs.store(group="schema/logger", name="wandb", node=WandbLoggerConfig)
    for name, node in METHOD_SCHEMAS.items():
        cs.store(group="schema/method", name=name, node=node)


# --------------------------------------------------------------------------- validation

MODEL_SOURCES = ("pretrained", "gguf", "tiny")
DEVICES = ("cpu", "cuda", "auto")
PRECISIONS = ("fp32", "bf16", "fp16", "auto")
DTYPES = ("float32", "bfloat16", "float16")
QUANT_TYPES = ("nf4", "fp4")
DATA_FORMATS = ("auto", "alpaca", "chat", "question_decomposition", "prompts", "preference")
OPTIMIZERS = (
    "adamw_torch",
    "adamw_torch_fused",
    "adafactor",
    "sgd",
    "paged_adamw_32bit",
    "paged_adamw_8bit",
    "adamw_bnb_8bit",
    "adamw_8bit",
)


def looks_local(path: str) -> bool:
    """A path the user means as a file or directory on this machine (not a hub id)."""
    return path.startswith(("/", ".", "~")) or path.count("/") > 1 or Path(path).expanduser().exists()


def validate(cfg: DictConfig) -> None:
    """Collect every cross-field error in the composed config and raise them together.

    Each problem reads `key=value: rule; fix: what to do`.
    """
    errors: list[str] = []

    def check(ok: bool, key: str, value: Any, rule: str, fix: str) -> None:
        if not ok:
            errors.append(f"{key}={_show(value)}: {rule}; fix: {fix}")

    def positive(key: str, value: float, example: str) -> None:
        check(value > 0, key, value, "must be positive", f"use e.g. {key.split('.')[-1]}={example}")

    def one_of(key: str, value: Any, choices: tuple[str, ...]) -> None:
        check(value in choices, key, value, "unknown value", f"choose one of: {', '.join(choices)}")

    check(cfg.seed >= 0, "seed", cfg.seed, "must be >= 0", "use a non-negative integer, e.g. seed=42")
    positive("samples.max_new_tokens", cfg.samples.max_new_tokens, "64")

    m = cfg.model
    one_of("model.source", m.source, MODEL_SOURCES)
    if m.source == "pretrained" and looks_local(m.path):
        check(
            (Path(m.path).expanduser() / "config.json").is_file(),
            "model.path",
            m.path,
            "not a model directory (no config.json)",
            "give a directory saved by save_pretrained, or a hub id such as Qwen/Qwen2.5-3B",
        )
    if m.source == "gguf":
        check(
            bool(m.gguf_file),
            "model.gguf_file",
            m.gguf_file,
            "empty",
            "name the .gguf file inside the package",
        )

    t = cfg.method
    positive("method.learning_rate", t.learning_rate, "2e-4")
    positive("method.num_epochs", t.num_epochs, "1")
    check(
        t.max_steps >= 0,
        "method.max_steps",
        t.max_steps,
        "must be >= 0",
        "use 0 (train num_epochs) or a step count",
    )
    check(
        0 <= t.warmup_ratio < 1, "method.warmup_ratio", t.warmup_ratio, "must be in [0, 1)", "use e.g. 0.03"
    )
    positive("method.max_grad_norm", t.max_grad_norm, "1.0")
    positive("method.logging_steps", t.logging_steps, "1")
    if "lora_r" in t:
        positive("method.lora_r", t.lora_r, "16")
        positive("method.lora_alpha", t.lora_alpha, "32 (often 2 x lora_r)")
        check(
            0 <= t.lora_dropout < 1,
            "method.lora_dropout",
            t.lora_dropout,
            "must be in [0, 1)",
            "use e.g. 0.05",
        )
        tm = t.target_modules
        check(
            tm == "all-linear" or (not isinstance(tm, str) and len(tm) > 0),
            "method.target_modules",
            tm,
            "must be all-linear or a non-empty list",
            "use all-linear or a list of module names, e.g. [q_proj,v_proj]",
        )
    if "adapter" in t:
        one_of("method.adapter", t.adapter, ("lora", "none"))
    if "beta" in t:
        check(t.beta >= 0, "method.beta", t.beta, "must be >= 0", "use e.g. beta=0.1")
    if "num_generations" in t:
        check(
            t.num_generations >= 2,
            "method.num_generations",
            t.num_generations,
            "must be >= 2 (advantages compare a group)",
            "use e.g. 4 or 8",
        )
        positive("method.prompts_per_step", t.prompts_per_step, "4")
    if "ppo_epochs" in t:
        for key in (
            "batch_size",
            "mini_batch_size",
            "gradient_accumulation_steps",
            "ppo_epochs",
            "kl_horizon",
        ):
            positive(f"method.{key}", t[key], "4")
        check(
            t.batch_size % t.mini_batch_size == 0,
            "method.mini_batch_size",
            t.mini_batch_size,
            f"must divide method.batch_size={t.batch_size}",
            "choose a divisor, e.g. batch_size=10 with mini_batch_size=2",
        )
        for key in ("cliprange", "cliprange_value", "vf_coef", "target_kl"):
            positive(f"method.{key}", t[key], "0.2")
        check(t.init_kl_coef >= 0, "method.init_kl_coef", t.init_kl_coef, "must be >= 0", "use e.g. 0.2")
        for key in ("gamma", "lam"):
            check(0 <= t[key] <= 1, f"method.{key}", t[key], "must be in [0, 1]", "use e.g. 1.0 and 0.95")
    if "max_new_tokens" in t:
        positive("method.max_new_tokens", t.max_new_tokens, "16")
        positive("method.temperature", t.temperature, "1.0")
        check(0 < t.top_p <= 1, "method.top_p", t.top_p, "must be in (0, 1]", "use 1.0 to turn it off")
        check(t.top_k >= 0, "method.top_k", t.top_k, "must be >= 0", "use 0 to turn it off")
    if "num_virtual_tokens" in t:
        positive("method.num_virtual_tokens", t.num_virtual_tokens, "20")

    e = cfg.eval
    check(
        e.limit is None or e.limit > 0, "eval.limit", e.limit, "must be positive", "use null (all) or e.g. 50"
    )
    check(
        e.num_fewshot is None or e.num_fewshot >= 0,
        "eval.num_fewshot",
        e.num_fewshot,
        "must be >= 0",
        "use null or 0",
    )
    positive("eval.batch_size", e.batch_size, "16")
    check(
        not cfg.export.merge or ("lora_r" in t and t.get("adapter", "lora") == "lora"),
        "export.merge",
        cfg.export.merge,
        f"method={t.name} trains no LoRA adapter to merge",
        "drop export.merge (model/ already loads on its own), or train LoRA (method=lora)",
    )

    h = cfg.hardware
    full_finetune = t.name == "sft" or t.get("adapter") == "none"
    one_of("hardware.device", h.device, DEVICES)
    one_of("hardware.precision", h.precision, PRECISIONS)
    one_of("hardware.model_dtype", h.model_dtype, DTYPES)
    one_of("hardware.bnb_4bit_compute_dtype", h.bnb_4bit_compute_dtype, DTYPES)
    one_of("hardware.bnb_4bit_quant_type", h.bnb_4bit_quant_type, QUANT_TYPES)
    one_of("hardware.optim", h.optim, OPTIMIZERS)
    for key in ("sft_batch_size", "sft_grad_accum", "pref_batch_size", "pref_grad_accum"):
        positive(f"hardware.{key}", h[key], "4")
    check(
        h.max_seq_length >= 16, "hardware.max_seq_length", h.max_seq_length, "must be >= 16", "use e.g. 512"
    )
    check(
        h.quantize_min_params_b >= 0,
        "hardware.quantize_min_params_b",
        h.quantize_min_params_b,
        "must be >= 0",
        "use 0 to quantize every model",
    )
    check(
        not (h.device == "cpu" and h.precision == "fp16"),
        "hardware.precision",
        h.precision,
        "fp16 mixed precision needs a GPU",
        "on cpu use fp32, bf16 or auto",
    )
    check(
        not (h.precision == "fp16" and h.model_dtype == "float16" and full_finetune),
        "hardware.model_dtype",
        h.model_dtype,
        "full fine-tuning with fp16 needs float32 master weights",
        "set hardware.model_dtype=float32",
    )
    check(
        not (h.load_in_4bit and full_finetune),
        "hardware.load_in_4bit",
        h.load_in_4bit,
        "4-bit weights cannot be fully fine-tuned",
        "train a LoRA adapter (method=lora, or method.adapter=lora) or set hardware.load_in_4bit=false",
    )
    check(
        not (h.optim.startswith("paged_") and h.device == "cpu"),
        "hardware.optim",
        h.optim,
        "paged optimizers need CUDA",
        "on cpu use hardware.optim=adamw_torch",
    )

    r = cfg.reward
    one_of("reward.name", r.name, ("keyword", "model", "mix"))
    if r.name == "mix":
        check(
            len(r.components) == len(r.weights) > 0,
            "reward.weights",
            list(r.weights),
            f"needs one weight per component of reward.components={list(r.components)}",
            "give as many weights as components, e.g. reward.weights=[1.0,0.5]",
        )

    d = cfg.data
    one_of("data.format", d.format, DATA_FORMATS)
    check(
        d.max_samples >= 0,
        "data.max_samples",
        d.max_samples,
        "must be >= 0",
        "use 0 (all rows) or a row count",
    )

    if cfg.logger.name == "wandb":
        one_of("logger.mode", cfg.logger.mode, ("auto", "offline", "online"))
        check(
            cfg.logger.mode != "online" or has_api_key(),
            "logger.mode",
            cfg.logger.mode,
            "no wandb API key (WANDB_API_KEY, or a netrc entry that `wandb login` writes)",
            "run `wandb login` or set WANDB_API_KEY; logger.mode=auto runs offline without a key",
        )

    if errors:
        raise ConfigError(errors)


def _show(value: Any) -> str:
    """A value as the user would write it on the command line."""
    if isinstance(value, bool):
        return str(value).lower()
    return "''" if value == "" else str(value)

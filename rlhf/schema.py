"""The config schemas (types only) of every group but `method`, and the fields methods share.

Values live in the YAML files under conf/; the dataclasses here give every key its type, so Hydra rejects a
mistyped key or a wrong type on the command line and in YAML. A field that has a default here is optional
and the YAMLs leave it out unless they change it; a field marked MISSING must be set by every option of its
group. Each method's own schema is its module's `Config` (rlhf/methods/), built on the bases here.

This module imports nothing heavier than OmegaConf: `python -m rlhf --cfg job` must stay fast.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING


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
class LoraTrainingConfig(TrainingConfig):
    """TrainingConfig and a LoRA adapter's settings."""

    lora_r: int = MISSING
    lora_alpha: int = MISSING
    lora_dropout: float = MISSING
    target_modules: Any = MISSING  # "all-linear" or a list of module names


@dataclass
class OptionalLoraConfig(LoraTrainingConfig):
    """A method that trains LoRA by default and every weight with adapter=none."""

    adapter: str = MISSING  # lora | none (full fine-tuning)


@dataclass
class SamplingFields:
    """How a method that generates while it trains samples its completions."""

    max_new_tokens: int = MISSING
    temperature: float = MISSING
    top_k: int = MISSING  # 0 = off
    top_p: float = MISSING


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
    checkpoint_every: int = MISSING  # steps between checkpoints where checkpoint.every is null
    checkpoint_keep: int = MISSING  # complete checkpoints kept where checkpoint.keep is null


@dataclass
class DataConfig:
    name: str = MISSING
    # a shipped set (rlhf/datasets/<path>.jsonl), a local .json/.jsonl/.csv/.parquet file, a directory or
    # glob of them, or a hub id
    path: str = MISSING
    eval_path: str = ""  # a held-out set in the same format (rm reports pairwise accuracy on it)
    format: str = "auto"  # auto (from the keys) or one of rlhf.data.FORMATS
    split: str = "train"  # hub data sets only
    subset: str = ""  # hub data sets only: the config name ("" = the default one)
    revision: str = "main"  # hub data sets only: a branch, tag or commit
    # source column -> format key, e.g. {question: prompt, answer: completion}; null = as they are (not a
    # typed dict: struct mode lets no override add keys to one)
    columns: Any = None
    as_chat: bool = (
        False  # strings become chat turns (user prompt, assistant answers): the chat template applies
    )
    too_long: str = (
        "auto"  # rows over hardware.max_seq_length: auto (truncate SFT rows, drop others) | truncate | drop
    )
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
    include_path: list[str] = field(default_factory=list)  # your own lm-eval task directories (YAMLs + utils)


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
class CheckpointConfig:
    every: int | None = (
        MISSING  # steps between checkpoints; null: the hardware profile's; 0: none while training
    )
    keep: int | None = MISSING  # complete checkpoints kept; null: the hardware profile's
    at_end: bool = MISSING  # also checkpoint the last step (a finished run can then be resumed further)


@dataclass
class RootConfig:
    seed: int = MISSING
    cache_dir: str = MISSING
    optimize_metric: str = MISSING  # the summary.json key the run returns to a sweeper (nested: eval.<key>)
    resume: str = (
        MISSING  # "": a new run; a run (or multirun) directory to continue; auto: hydra.run.dir's, if any
    )
    samples: SamplesConfig = field(default_factory=SamplesConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    # each group's node is typed by its own schema (see the YAML's defaults list)
    model: Any = MISSING
    method: Any = MISSING
    hardware: Any = MISSING
    reward: Any = MISSING
    data: Any = MISSING
    eval: Any = MISSING
    logger: Any = MISSING

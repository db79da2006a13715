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
    # transformers' attention kernel (TRL's ModelConfig.attn_implementation): sdpa, eager, flash_attention_2, ...
    attn_implementation: str = "sdpa"
    # the numbers of the model's config.json (hidden_size, num_hidden_layers, vocab_size, ...):
    # - tiny: what its random Llama is built from (vocab_size comes from the tokenizer);
    # - pretrained / gguf: what `python -m rlhf.plan` sizes the model from without its files, copied from the
    #   published config.json, with its `model_type` (llama when absent) and `hub_id`, the model.path they
    #   describe (every preset names it; for any other model.path the plan reads that model's own config.json,
    #   so numbers given on the command line name it too); loading ignores them.
    architecture: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainingConfig:
    """Keys shared by every method that runs an optimiser."""

    name: str = MISSING
    learning_rate: float = MISSING
    num_epochs: float = MISSING
    max_steps: int = 0  # > 0 overrides num_epochs
    lr_scheduler_type: str = "linear"
    # the schedule's own settings (transformers' lr_scheduler_kwargs), e.g. {min_lr_rate: 0.1} for
    # cosine_with_min_lr or {num_decay_steps: 100} for warmup_stable_decay
    lr_scheduler_kwargs: dict[str, Any] = field(default_factory=dict)
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    logging_steps: int = 1
    # held-out rows (data.eval_*) scored every N steps by the methods that evaluate on a schedule (the SFT
    # methods' eval loss, dpo / kto's held-out accuracy); 0: at the end only
    eval_steps: int = 0


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
class GroupPolicyFields:
    """A policy trained on groups of sampled completions per prompt (grpo, rloo: TRL's trainers), with the
    clipped ratio both share."""

    beta: float = MISSING  # KL coefficient to the reference (the base with the adapter disabled)
    num_generations: int = MISSING  # completions per prompt: the group its advantages compare
    prompts_per_step: int = MISSING
    num_iterations: int = MISSING  # policy updates per generation (the mu of the GRPO paper)
    epsilon: float = MISSING  # the ratio's lower clip
    epsilon_high: float | None = MISSING  # its upper clip (DAPO: 0.28); null: epsilon
    mask_truncated_completions: bool = MISSING  # completions cut at max_new_tokens get no loss (DAPO)


@dataclass
class HardwareConfig:
    name: str = MISSING
    device: str = MISSING  # cpu | cuda | auto
    precision: str = MISSING  # fp32 | bf16 | fp16 | auto (bf16 where the device has it, else fp32)
    tf32: bool = MISSING
    model_dtype: str = MISSING  # float32 | bfloat16 | float16 | auto: the dtype the weights are loaded in
    load_in_4bit: bool = MISSING
    quantize_min_params_b: float = MISSING  # 4-bit only for models at least this large (billions)
    bnb_4bit_quant_type: str = MISSING
    bnb_4bit_use_double_quant: bool = MISSING
    bnb_4bit_compute_dtype: str = MISSING
    # what the 4-bit values are packed in: uint8 (bitsandbytes' own), or the float dtype the weights compute in,
    # which FSDP can shard (the maintainers' FSDP-QLoRA recipe); under fsdp uint8 keeps the 4-bit base whole in
    # each process
    bnb_4bit_quant_storage: str = "uint8"
    sft_batch_size: int = MISSING
    sft_grad_accum: int = MISSING
    pref_batch_size: int = MISSING  # rm / dpo
    pref_grad_accum: int = MISSING
    gradient_checkpointing: bool = MISSING
    optim: str = MISSING
    max_seq_length: int = MISSING
    # TRL's fused LM head (sft, lora, dpo, kto, grpo, rloo) scores log-probs in tiles of tokens x vocabulary
    # entries; 0: TRL's own (4096 x 32768, sized for a GPU's fused kernel). Where no Triton kernel runs (a CPU),
    # each tile's float32 temporaries are what training's peak is made of: the cpu profile sets small tiles.
    head_tile_tokens: int = 0
    head_tile_vocab: int = 0
    # training forwards run the decoder on a padded batch's real tokens only (rlhf.models.pack_padded_rows):
    # fewer positions computed and saved for backward. Off where sdpa's packed mask would cost the GPU its
    # flash kernel; the cpu profile sets it.
    pack_rows: bool = False
    # gated SiLU MLPs and RMSNorms keep less for backward, with the same gradients (rlhf.models.lean), in the
    # methods TRL trains (not our ppo, whose peak is its rollouts'); on a GPU, Liger's Triton kernels are the
    # tool for this. The cpu profile sets it.
    lean_layers: bool = False
    # a single run (not a sweep's jobs, which share a process) leaves out the optional libraries it cannot
    # use, which transformers, peft and accelerate import whenever they are installed: bitsandbytes where
    # nothing quantizes and the optimizer is torch's, DeepSpeed outside a DeepSpeed launch, wandb with
    # logger=none (~85 MB of a CPU process; rlhf.runtime.leave_out). The cpu profile sets it.
    lean_imports: bool = False
    # each weight is updated in backward once its gradient is whole, and the gradient freed then
    # (rlhf.models.in_backward): full fine-tuning holds one weight's gradient instead of all of them. No clipping
    # by the global norm (method.max_grad_norm=0), no accumulation, one process.
    optimizer_in_backward: bool = False
    # the device's memory in GiB (2**30 bytes, as torch reports it) that `rlhf.plan` compares its estimate with;
    # null: the machine's RAM (cpu). On a GPU itself, the run compares with the GPU's own memory instead.
    memory_gb: float | None = MISSING
    dataloader_num_workers: int = 0
    checkpoint_every: int = MISSING  # steps between checkpoints where checkpoint.every is null
    checkpoint_keep: int = MISSING  # complete checkpoints kept where checkpoint.keep is null


@dataclass
class DataConfig:
    name: str = MISSING
    # a shipped set (rlhf/datasets/<path>.jsonl), a local .json/.jsonl/.csv/.parquet file, a directory or
    # glob of them, or a hub id
    path: str = MISSING
    # held-out rows, at most one of the three: a file or set in the same format, a hub split, or a share
    # of data.path's rows split off with the run's seed (rm / dpo / kto report accuracy on them, the SFT
    # methods eval loss, ppo / grpo / rloo the reward of greedy answers)
    eval_path: str = ""
    eval_split: str = ""  # hub data sets only: the held-out split, e.g. test
    eval_fraction: float = 0.0  # e.g. 0.1: a tenth of the rows held out (0: none)
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
    # SFT methods: rows packed into hardware.max_seq_length windows without padding (TRL's padding-free
    # packing; attention stays within each row), loss still on completions only
    packing: bool = False
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
    # model: how prompt and answer reach a reward model whose tokenizer has no chat template (one with a
    # template gets the conversation in its chat format)
    template: str = "{prompt}\n\n{answer}"


@dataclass
class EvalConfig:
    name: str = MISSING
    tasks: list[str] = MISSING  # lm-eval task names: ours (rlhf_*, rlhf/tasks/) or lm-eval's registry
    limit: int | None = MISSING  # items per task; null = every item
    # tasks scored on every item whatever `limit` (log-likelihood tasks: a forward pass per choice, cheap,
    # and their deltas need the items to be told from noise)
    every_item: list[str] = field(default_factory=list)
    # their batch: log-likelihood requests hold batch x length x vocabulary logits (64 x 100 x 49k floats
    # for SmolLM2: 1.3 GB, twice over with the log-softmax), so they run in small batches
    every_item_batch_size: int = 8
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
class MonitorRule:
    """One health rule: a signal, a condition on it, and what to do when it holds (conf/monitor/)."""

    signal: str = MISSING  # a name from rlhf.monitor.SIGNALS (kl, entropy, response_length, ...)
    # above / below: the window's mean beyond `value`; rise / fall: the later values' mean `value` percent
    # above / below its early-run level (the first window); spike: the newest value over `value` times
    # the window's median; nonfinite: NaN or infinite; trend_up / trend_down: the window's least-squares
    # slope beyond `value` per step
    condition: str = MISSING
    value: float = 0.0
    window: int = 5  # logged values the condition looks at
    action: str = "warn"  # warn | checkpoint (save now, go on) | stop (save, end the run cleanly here)
    why: str = ""  # what it means when it fires, printed with the alarm
    optional: bool = False  # true: applies where the method logs the signal (the shipped rule sets)


@dataclass
class MonitorConfig:
    name: str = MISSING
    # rule name -> a MonitorRule's fields (untyped here: OmegaConf cannot add a typed dataclass entry from
    # the command line, +monitor.rules.NAME={...}; rlhf.monitor.rules_of types each against MonitorRule)
    rules: dict[str, Any] = field(default_factory=dict)


@dataclass
class PlanConfig:
    check: bool = (
        MISSING  # estimate peak memory before weights load; refuse a run that cannot fit (rlhf.plan)
    )


@dataclass
class StageConfig:
    """One stage of a pipeline: a training run (`python -m rlhf`) or a synth run (`python -m rlhf.synth`)."""

    name: str = MISSING  # its directory under the pipeline's, and how later stages refer to it: ${stage:NAME}
    run: str = MISSING  # train | synth
    overrides: list[str] = field(default_factory=list)  # that command's overrides


@dataclass
class PipelineConfig:
    name: str = MISSING
    stages: list[StageConfig] = MISSING
    compare: list[str] = field(default_factory=list)  # stages in the closing report ([]: every train stage)


@dataclass
class PipelineRootConfig:
    """`python -m rlhf.pipeline`'s root (conf/pipelines.yaml)."""

    dir: str = MISSING  # the pipeline's directory: a stage's run directory is dir/<stage name>
    common: list[str] = field(default_factory=list)  # overrides added to every stage (e.g. model=tiny)
    pipeline: Any = MISSING


@dataclass
class DistributedConfig:
    """How many processes one run trains on and how they share the model (conf/distributed/, rlhf.distributed).

    Mixed precision is the hardware profile's; each preset only says how processes share the work.
    """

    name: str = MISSING  # none | ddp | fsdp | deepspeed-zero2 | deepspeed-zero3 | deepspeed-zero3-offload
    engine: str = MISSING  # none | ddp | fsdp | deepspeed
    # processes over all machines; null: one per GPU visible on each machine (a CPU run gives its count)
    num_processes: int | None = None
    num_machines: int = 1
    machine_rank: int = 0  # this machine's index; 0 is the one at main_process_ip
    main_process_ip: str | None = None  # rank 0's address, needed with num_machines > 1
    main_process_port: int | None = None  # null: a free port on one machine, 29500 across machines
    # deepspeed: the ZeRO stage, and where ZeRO-3 keeps optimizer states and parameters between uses
    zero_stage: int = 0
    offload: str = "none"  # none | cpu
    # fsdp (FSDP2): free each layer's gathered weights after its forward pass (false: keep them, ZeRO-2-like)
    reshard_after_forward: bool = True
    offload_params: bool = False  # fsdp: parameters and gradients in CPU RAM between uses


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
    plan: PlanConfig = field(default_factory=PlanConfig)
    # each group's node is typed by its own schema (see the YAML's defaults list)
    model: Any = MISSING
    method: Any = MISSING
    hardware: Any = MISSING
    reward: Any = MISSING
    data: Any = MISSING
    eval: Any = MISSING
    logger: Any = MISSING
    monitor: Any = MISSING
    distributed: Any = MISSING


@dataclass
class SynthConfig:
    """`python -m rlhf.synth`: the keys every synth mode shares (conf/synth/)."""

    name: str = MISSING  # magpie | self-instruct | preferences
    # candidates generated: magpie conversations, self-instruct instructions, preferences prompts answered
    # (preferences: 0 = every prompt); the filters decide how many of them reach data.jsonl
    count: int = MISSING
    batch_size: int = MISSING  # candidates per batch (the resume and stall unit)
    checkpoint_every: int = MISSING  # candidates between flushes of data.jsonl, rejected.jsonl and state.json
    stall_s: float = MISSING  # seconds without a generated token before a batch is retried at half the size
    backend: str = MISSING  # transformers | vllm (CUDA only)
    max_new_tokens: int = MISSING  # per answer
    top_p: float = MISSING  # answers
    # quality filters, applied in order, each an entry {name, on, ...its parameters} (rlhf/synth/filters.py)
    filters: list[Any] = field(default_factory=list)
    examples: int = 3  # kept rows shown in card.md


@dataclass
class InstructionSampling:
    """A mode that writes its own instructions: their sampling, apart from the answers' temperature."""

    temperature: float = MISSING  # answers (0: greedy)
    instruction_temperature: float = MISSING
    instruction_top_p: float = MISSING
    instruction_max_new_tokens: int = MISSING


@dataclass
class MagpieConfig(InstructionSampling, SynthConfig):
    system_prompt: str = MISSING  # steers the topic ("": the template's own default); not written to rows
    turns: int = MISSING  # user / assistant exchanges per conversation


@dataclass
class SelfInstructConfig(InstructionSampling, SynthConfig):
    seed_tasks: str = MISSING  # Self-Instruct's seed-task JSONL ("": the shipped one)
    prompt_seed_tasks: int = MISSING  # instructions in a bootstrap prompt taken from the seed tasks
    prompt_machine_tasks: int = MISSING  # ... and from the instructions generated so far
    classification_shots: int = MISSING  # seed tasks of each kind in the "is it classification?" prompt
    instance_shots: int = MISSING  # seed tasks shown with their instances in an instance prompt


@dataclass
class PreferencesConfig(SynthConfig):
    prompts: str = MISSING  # a data.path-like value: a shipped set, a file, a directory or a hub id
    n: int = MISSING  # answers per prompt
    temperatures: list[float] = MISSING  # answer i is sampled at temperatures[i % len]
    rejected: str = MISSING  # worst | random_lower (any answer scored below the chosen one)
    min_margin: float = MISSING  # pairs whose chosen - rejected score is below this are dropped (ties too)


@dataclass
class SynthRootConfig:
    seed: int = MISSING
    cache_dir: str = MISSING
    resume: str = MISSING  # "": a new run; a synth run directory to continue where it stopped
    model: Any = MISSING
    hardware: Any = MISSING
    reward: Any = MISSING
    synth: Any = MISSING

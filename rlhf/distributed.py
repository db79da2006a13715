"""`distributed=<preset>`: one run on several processes, through accelerate (conf/distributed/).

What it owns:
- the presets as accelerate's config file (and, for DeepSpeed, the DeepSpeed JSON it points to), written into
  the run directory as accelerate.yaml (and deepspeed.json), mixed precision taken from the hardware profile;
- the relaunch: `python -m rlhf distributed=ddp ...` runs `accelerate launch --config_file <run>/accelerate.yaml
  -m rlhf <the same overrides> hydra.run.dir=<run>` and waits for it, so the user writes neither file;
- the checks, before any process starts: which methods run under which engine, and what a preset needs of the
  machine (GPUs, a process count, an address for several machines).

A process is inside a launch when its launcher (torchrun, and accelerate and DeepSpeed through it) set
LOCAL_RANK or WORLD_SIZE: it trains as one rank, and its `distributed` node is only informational (the
launcher's own config decides; the method x engine rules read the engine from the launcher's environment).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, NoReturn

import yaml
from omegaconf import DictConfig

from rlhf import checkpoint, config, methods
from rlhf.errors import RUN_START_FILES, Problems
from rlhf.runtime import die_with_parent, inside_launch, launch_engine, launch_zero_stage

ACCELERATE_FILE = "accelerate.yaml"
DEEPSPEED_FILE = "deepspeed.json"
ENGINES = ("none", "ddp", "fsdp", "deepspeed")
# the profile's precision -> accelerate's mixed_precision
MIXED_PRECISION = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}
# methods that train in a loop of our own on accelerate rather than on a TRL trainer: under a sharding engine a
# rollout ends on an optimizer step (check)
OWN_LOOP = ("ppo",)  # rlhf/methods/ppo/loop.py
# seconds the launcher waits, after a Ctrl-C or SIGTERM, for its processes to finish their step and checkpoint
STOP_GRACE_S = 600


def fsdp_on_cpu() -> None:
    """Let accelerate run FSDP on CPU processes (gloo), as torch's FSDP2 does.

    accelerate 1.15 turns its FSDP plugin on only for GPU-like device types (AcceleratorState); on CPU
    processes it drops the plugin and trains them as plain data parallel under the preset's name. torch's
    fully_shard runs on a CPU mesh over gloo, so inside a launch whose config asks for FSDP on the CPU the state
    takes the plugin as it would on GPUs, with a mixed precision policy that trains as ddp with autocast does.
    Nothing changes in any other process, nor on GPUs.
    """
    if launch_engine() != "fsdp":
        return
    from accelerate import state
    from accelerate.utils import DistributedType

    init = state.AcceleratorState.__init__
    if getattr(init, "rlhf_fsdp_on_cpu", False):
        return

    def init_with_fsdp(self, *args, fsdp_plugin=None, **kwargs):
        init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = DistributedType.FSDP
            if self._mixed_precision != "no" and fsdp_plugin.mixed_precision_policy is None:
                # accelerate's policy would compute in, reduce in and return its dtype: the loss, computed on
                # the outputs, would then be bf16 (DPO's first loss 0.6914 instead of ln 2). As under ddp with
                # autocast: bf16 matmuls, float32 gradients and outputs
                import torch
                from torch.distributed.fsdp import MixedPrecisionPolicy

                dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[self._mixed_precision]
                fsdp_plugin.mixed_precision_policy = MixedPrecisionPolicy(
                    param_dtype=dtype, reduce_dtype=torch.float32, output_dtype=torch.float32
                )
            self.fsdp_plugin = fsdp_plugin
            state.PartialState._shared_state["distributed_type"] = self.distributed_type  # as accelerate does

    init_with_fsdp.rlhf_fsdp_on_cpu = True
    state.AcceleratorState.__init__ = init_with_fsdp


def gather_weights(model) -> dict | None:
    """The whole model's weights where FSDP or DeepSpeed ZeRO-3 holds them sharded: every process sends its
    shard, rank 0 receives them on its CPU (a collective: each rank calls it at the same point). None for a
    model neither shards, and on the other ranks."""
    from rlhf.models.partitioned import is_partitioned, is_sharded
    from rlhf.runtime import is_main_process

    if is_partitioned(model):
        state = gather_zero3(model)
    elif is_sharded(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    else:
        return None
    if not is_main_process():
        return None
    first: dict[int, str] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        tied = first.setdefault(id(param), name)
        if tied != name and tied in state:
            # one parameter under two names (an LM head tied to the embedding) comes back as two copies; as
            # one tensor, save_pretrained writes it once, as it does for the unsharded model
            state[name] = state[tied]
    return state


def gather_zero3(model) -> dict:
    """ZeRO-3's partitioned parameters, one at a time (at most one whole tensor beyond the shards in any
    process), as deepspeed's own 16-bit save does; the state dict on rank 0, {} elsewhere. Buffers are not
    partitioned."""
    import deepspeed

    from rlhf.runtime import is_main_process

    main = is_main_process()
    state: dict = {}
    for name, param in model.named_parameters():
        with deepspeed.zero.GatheredParameters([param], modifier_rank=None):
            if main:
                state[name] = param.detach().to("cpu", copy=True)
    if main:
        kept = model.state_dict().keys()  # persistent buffers only (not a rotary embedding's inv_freq)
        state.update((n, b.detach().to("cpu", copy=True)) for n, b in model.named_buffers() if n in kept)
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    # training is over: a model built from here (rank 0 reloads model/ to sample and evaluate) is built whole,
    # not partitioned by zero.Init across processes that no longer take part
    unset_hf_deepspeed_config()
    return state


def leave_launch() -> NoReturn:
    """A rank other than 0 is done once the weights are gathered, and ends here, without the interpreter's
    teardown (os._exit, its output flushed). A rank that exited as usual with its process group still up
    aborted at times ("terminate called without an active exception", as the group's threads were destroyed)
    and took the launch down while rank 0 still saved and evaluated: a ZeRO-3 rank, and under FSDP on gloo
    rank 1 of a two-process LoRA SFT once in a fast tier. Under DeepSpeed it leaves the group first, as it
    did; under FSDP doing so had aborted rank 1 once in three bf16 DPO runs."""
    import logging

    import torch.distributed as dist

    if launch_engine() == "deepspeed" and dist.is_initialized():
        dist.destroy_process_group()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def is_launch_file(name: str) -> bool:
    """The files `launch` writes into a run directory before any process starts (a new run may have them)."""
    return (name.startswith("accelerate") and name.endswith(".yaml")) or name == DEEPSPEED_FILE


# --------------------------------------------------------------------------- which config, which run dir


def composed_for_launch(argv: list[str]) -> DictConfig | None:
    """The run's config (with its hydra node) when `argv` asks for a distributed preset and this process is
    not inside a launch; None otherwise (the Hydra app runs as usual).

    Only plain overrides are read here: with Hydra flags (-m, --cfg, --help, ...) the app runs and a sweep's
    jobs relaunch themselves (`launch`, from the task function). A config that does not compose is left to the
    app too, which reports it as it always does.
    """
    if inside_launch() or any(a.startswith("-") for a in argv):
        return None
    if not any(a.lstrip("+~").startswith(("distributed", "experiment")) for a in argv):
        return None  # the default is none, and only an experiment preset could choose another
    try:
        cfg = config.compose(argv, return_hydra_config=True)
    except Exception:
        return None
    return cfg if cfg.distributed.engine != "none" else None


def run_dir_of(cfg: DictConfig) -> Path:
    """hydra.run.dir as Hydra would make it (the user's, or the timestamped default), resolved once: every
    process of the launch is then given the same directory."""
    return Path(str(cfg.hydra.run.dir)).expanduser()


# --------------------------------------------------------------------------- the rules


def in_effect(cfg: DictConfig) -> tuple[str, str, int]:
    """(preset name, engine, ZeRO stage) this process trains under.

    Inside a launch, the launcher's own settings (accelerate gives its children ACCELERATE_USE_FSDP /
    ACCELERATE_USE_DEEPSPEED); outside, the composed preset.
    """
    engine = launch_engine()
    if engine == "deepspeed":
        stage = launch_zero_stage()
        return f"deepspeed-zero{stage}", "deepspeed", stage
    if engine:
        return engine, engine, 0
    node = cfg.get("distributed")  # a run's saved config from before this group existed has none
    if node is None:
        return "none", "none", 0
    return node.name, node.engine, node.zero_stage


# hardware.optim values whose step takes FSDP2's DTensor shards. Tested on two CPU processes: transformers'
# Adafactor makes its factored moments as plain tensors beside them, torch's Adagrad keeps the state it made for
# the weights accelerate swaps for the shards, and bitsandbytes' kernels have no DTensor rule (bitsandbytes #89):
# each ended in a traceback at the first step. DeepSpeed's ZeRO steps flat plain tensors and runs them all.
FSDP_OPTIMIZERS = ("adamw_torch_fused", "adamw_torch", "sgd", "rmsprop")


def check(cfg: DictConfig, hw: Any, p: Problems) -> None:
    """The method x engine rules, added to `p` (rlhf.validate.check_method_and_profile calls this on the
    composed profile, and the run again on the one hardware=auto picked)."""
    name, engine, _ = in_effect(cfg)
    if engine in ("none", "ddp"):  # a full copy of the model in every process: every method
        return
    p.check(
        engine != "fsdp" or hw.optim in FSDP_OPTIMIZERS,
        "hardware.optim",
        hw.optim,
        f"under distributed={name} every weight and gradient is a DTensor shard, which this optimizer's step "
        "does not take",
        f"use hardware.optim={FSDP_OPTIMIZERS[0]} (or {', '.join(FSDP_OPTIMIZERS[1:])}: FSDP shards their states), "
        "or distributed=deepspeed-zero2 / deepspeed-zero3, which run it",
    )
    node = cfg.get("distributed")
    offload = engine == "deepspeed" and node is not None and node.get("offload") == "cpu"
    p.check(
        not offload or hw.optim.startswith(("adamw", "paged_adamw")),
        "hardware.optim",
        hw.optim,
        f"under distributed={name} DeepSpeed steps the offloaded states with its own CPU AdamW (deepspeed.json's "
        "optimizer), so this optimizer would not run",
        "use an AdamW (hardware.optim=adamw_torch_fused: its learning rate, betas, eps and weight decay carry over), "
        "or distributed=deepspeed-zero3 without offload",
    )
    method = cfg.method.name
    m = cfg.method
    if method in OWN_LOOP and m.mini_batch_size > 0 and m.gradient_accumulation_steps > 0:
        passes = m.ppo_epochs * math.ceil(m.batch_size / m.mini_batch_size)
        engine_name, holder = ("DeepSpeed", "ZeRO") if engine == "deepspeed" else ("FSDP", "FSDP")
        p.check(
            passes % m.gradient_accumulation_steps == 0,
            "method.gradient_accumulation_steps",
            m.gradient_accumulation_steps,
            f"under {engine_name} a rollout's {passes} mini-batch passes (ppo_epochs x batch_size / "
            f"mini_batch_size) must end on an optimizer step: a checkpoint cannot hold the gradients "
            f"{holder} accumulates",
            f"use a divisor of {passes}",
        )
    # FSDP (its mixed precision policy) and DeepSpeed cast every floating-point weight to the dtype they compute
    # in; 4-bit values packed in another float dtype would come out rewritten. Bytes are never cast
    # (precision auto: checked again on the resolved profile)
    storage, precision = hw.bnb_4bit_quant_storage, hw.precision
    compute = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}.get(precision)
    p.check(
        not hw.load_in_4bit or storage == "uint8" or compute is None or storage == compute,
        "hardware.bnb_4bit_quant_storage",
        storage,
        f"under distributed={name} at precision {precision} every floating-point weight is cast to {compute}, "
        f"which rewrites 4-bit values packed in {storage}",
        f"hardware.bnb_4bit_quant_storage={compute}, or uint8",
    )


def check_machine(d: DictConfig, hw: Any, gpus: int, given_run_dir: bool, p: Problems) -> None:
    """What the preset needs of this machine and of the command line, before any process starts."""
    p.one_of("distributed.engine", d.engine, ENGINES)
    if d.engine == "deepspeed":
        p.check(
            importlib.util.find_spec("deepspeed") is not None,
            "distributed",
            d.name,
            "DeepSpeed is not installed",
            'pip install -e ".[deepspeed]" (deepspeed==0.19.8)',
        )
        p.check(
            d.zero_stage in (2, 3), "distributed.zero_stage", d.zero_stage, "must be 2 or 3", "use 2 or 3"
        )
        p.one_of("distributed.offload", d.offload, ("none", "cpu"))
    if d.engine == "fsdp":
        p.check(
            not (d.offload_params and hw.device == "cpu"),
            "distributed.offload_params",
            d.offload_params,
            "FSDP offloads parameters from GPUs into CPU RAM, and this run trains on the CPU, where they are "
            "already (torch's offload policy asks for an accelerator and stops the launch)",
            "drop it (distributed.offload_params=false)",
        )
    if d.num_processes is None:
        p.check(
            hw.device != "cpu",
            "distributed.num_processes",
            "null",
            "null means one process per visible GPU, and this run trains on the CPU",
            "give the count, e.g. distributed.num_processes=2 (CPU processes talk over gloo)",
        )
        p.check(
            hw.device == "cpu" or gpus > 0,
            "distributed.num_processes",
            "null",
            "null means one process per visible GPU, and none is visible",
            "give the count, e.g. distributed.num_processes=2",
        )
    else:
        p.positive("distributed.num_processes", d.num_processes, "2")
        p.check(
            d.num_processes % d.num_machines == 0,
            "distributed.num_processes",
            d.num_processes,
            f"must be a multiple of distributed.num_machines={d.num_machines} (the same count on each)",
            f"use e.g. distributed.num_processes={2 * d.num_machines}",
        )
        per_machine = d.num_processes // max(d.num_machines, 1)
        p.check(
            hw.device == "cpu" or per_machine <= gpus,
            "distributed.num_processes",
            d.num_processes,
            f"{per_machine} processes on this machine need as many GPUs, and {gpus} are visible",
            f"use distributed.num_processes={gpus * d.num_machines} or null (one per visible GPU)",
        )
    p.positive("distributed.num_machines", d.num_machines, "2")
    p.check(
        0 <= d.machine_rank < max(d.num_machines, 1),
        "distributed.machine_rank",
        d.machine_rank,
        f"must be in [0, {d.num_machines})",
        "use 0 on the machine at main_process_ip and 1, 2, ... on the others",
    )
    if d.num_machines > 1:
        p.check(
            bool(d.main_process_ip),
            "distributed.main_process_ip",
            d.main_process_ip or "null",
            "several machines meet at rank 0's address",
            "give it, e.g. distributed.main_process_ip=$(scontrol show hostnames | head -1) under Slurm",
        )
        p.check(
            given_run_dir,
            "hydra.run.dir",
            "null",
            "each machine would make its own timestamped directory",
            "pass the same hydra.run.dir=<shared path> on every machine",
        )


# --------------------------------------------------------------------------- the files


def processes(d: DictConfig, gpus: int) -> int:
    """The launch's process count over all machines: the preset's, or one per visible GPU on each machine."""
    return d.num_processes if d.num_processes is not None else gpus * d.num_machines


def accelerate_config(d: DictConfig, hw: Any, num_processes: int, run_dir: Path) -> dict[str, Any]:
    """accelerate's config file (what `accelerate config` writes) for the preset."""
    port = d.main_process_port
    if port is None:  # 0: accelerate picks a free port, so two runs on one machine do not collide
        port = 0 if d.num_machines == 1 else 29500
    out: dict[str, Any] = {
        "compute_environment": "LOCAL_MACHINE",
        # MULTI_GPU is the type whose launcher (torchrun) starts the processes; on a CPU accelerate then runs
        # them as MULTI_CPU over gloo (its own MULTI_CPU type starts one process unless given mpirun)
        "distributed_type": {"ddp": "MULTI_GPU", "fsdp": "FSDP", "deepspeed": "DEEPSPEED"}[d.engine],
        "num_processes": num_processes,
        "num_machines": d.num_machines,
        "machine_rank": d.machine_rank,
        "main_process_port": port,
        "rdzv_backend": "static",
        "same_network": True,
        # DeepSpeed on CPU processes: accelerate turns it on only without use_cpu, and its CPU accelerator then
        # talks over gloo (the trainer still trains on the CPU: its own use_cpu stays set)
        "use_cpu": hw.device == "cpu" and d.engine != "deepspeed",
        "debug": False,
    }
    if d.main_process_ip:
        out["main_process_ip"] = d.main_process_ip
    if d.engine != "deepspeed":
        # DeepSpeed takes its precision from its JSON ("auto": the trainer's bf16 / fp16, i.e. the profile's);
        # accelerate refuses a mixed_precision beside a deepspeed_config_file
        out["mixed_precision"] = MIXED_PRECISION[hw.precision]
    if d.engine == "fsdp":
        out["fsdp_config"] = {
            "fsdp_version": 2,
            # wraps each of the model's `_no_split_modules` (its decoder layer); FSDP2 shards per parameter,
            # so frozen base weights and trainable LoRA weights share a layer without FSDP1's use_orig_params
            "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            # rank 0 loads the weights, the others build on the meta device and receive theirs when sharded
            "fsdp_cpu_ram_efficient_loading": True,
            "fsdp_sync_module_states": True,  # accelerate's launcher requires it with the line above
            # checkpoints: each rank writes its shard (fast, resumable); the final model is to be gathered
            # whole (FULL_STATE_DICT) at save, as peft's FSDP guide does before save_model
            "fsdp_state_dict_type": "SHARDED_STATE_DICT",
            "fsdp_reshard_after_forward": d.reshard_after_forward,
            "fsdp_offload_params": d.offload_params,
            "fsdp_activation_checkpointing": False,  # the profile's gradient checkpointing goes via the trainer
        }
    if d.engine == "deepspeed":
        ds: dict[str, Any] = {"deepspeed_config_file": str(run_dir / DEEPSPEED_FILE)}
        # accelerate's zero.Init flag (for a script's own from_pretrained; rlhf builds the model it trains
        # partitioned itself: rlhf.models.partitioned)
        ds["zero3_init_flag"] = d.zero_stage == 3
        if d.num_machines > 1:
            ds["deepspeed_multinode_launcher"] = "standard"  # torchrun on each machine, as under Slurm
        out["deepspeed_config"] = ds
    return out


def deepspeed_config(d: DictConfig) -> dict[str, Any]:
    """DeepSpeed's JSON for a deepspeed-* preset, in the form transformers' integration documents: "auto"
    values are filled by the trainer from its arguments (batch, accumulation, clipping, bf16 / fp16 from the
    profile, and the model's hidden size), so they cannot disagree with the run's config."""
    zero: dict[str, Any] = {"stage": d.zero_stage, "overlap_comm": True, "contiguous_gradients": True}
    if d.zero_stage == 2:
        zero.update(
            allgather_partitions=True,
            allgather_bucket_size=int(2e8),
            reduce_scatter=True,
            reduce_bucket_size="auto",
        )
    else:
        zero.update(
            sub_group_size=int(1e9),
            reduce_bucket_size="auto",
            stage3_prefetch_bucket_size="auto",
            stage3_param_persistence_threshold="auto",
            stage3_max_live_parameters=int(1e9),
            stage3_max_reuse_distance=int(1e9),
            stage3_gather_16bit_weights_on_model_save=True,  # a save gathers the whole model in 16 bits
        )
    out: dict[str, Any] = {
        "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "bf16": {"enabled": "auto"},
        "fp16": {"enabled": "auto"},
        "zero_optimization": zero,
    }
    if d.offload == "cpu":
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
        # offloaded states are stepped on the CPU by DeepSpeed's own Adam (a torch optimizer there would be
        # refused as slow); its lr, betas, eps and weight decay are the trainer's
        out["optimizer"] = {
            "type": "AdamW",
            "params": {"lr": "auto", "betas": "auto", "eps": "auto", "weight_decay": "auto"},
        }
    return out


def write_files(d: DictConfig, hw: Any, num_processes: int, run_dir: Path) -> Path:
    """accelerate.yaml (and deepspeed.json) in the run directory; the accelerate file's path.

    With several machines each writes its own accelerate file (machine_rank differs) into the shared directory.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    name = ACCELERATE_FILE if d.machine_rank == 0 else f"accelerate-machine{d.machine_rank}.yaml"
    path = run_dir / name
    header = f"# written by python -m rlhf distributed={d.name}: accelerate launch --config_file {path} ...\n"
    path.write_text(
        header + yaml.safe_dump(accelerate_config(d, hw, num_processes, run_dir), sort_keys=False)
    )
    if d.engine == "deepspeed":
        part = run_dir / f".{DEEPSPEED_FILE}.{d.machine_rank}"  # whole or absent: other machines may read it
        part.write_text(json.dumps(deepspeed_config(d), indent=2) + "\n")
        part.replace(run_dir / DEEPSPEED_FILE)
    return path


# --------------------------------------------------------------------------- the launch


def visible_gpus() -> int:
    import torch

    return torch.cuda.device_count()


def launch(cfg: DictConfig, overrides: list[str], run_dir: Path) -> int:
    """Check the preset against this machine, write its files into `run_dir`, run `accelerate launch ... -m
    rlhf <overrides> hydra.run.dir=<run_dir>` and wait for it; its exit status.

    A launch that ends before training leaves nothing behind: a directory holding only what the processes
    write at start-up and the launch files goes.
    """
    d = cfg.distributed
    # auto -> this machine's profile (imports torch)
    hw = config.resolve_hardware(cfg.hardware, overrides, methods.frozen_base(cfg.method))
    gpus = visible_gpus() if hw.device == "cuda" else 0
    p = Problems()
    check(cfg, hw, p)  # again on the profile auto picked: a GPU profile may quantize
    given = any(o.startswith("hydra.run.dir=") for o in overrides)
    check_machine(d, hw, gpus, given, p)
    p.raise_if_any()

    n = processes(d, gpus)
    fresh = not run_dir.exists()
    config_file = write_files(d, hw, n, run_dir)
    args = [o for o in overrides if not o.startswith("hydra.run.dir=")] + [f"hydra.run.dir={run_dir}"]
    # accelerate launch, through launcher_main below (a Ctrl-C ends it with 128 + n)
    command = [sys.executable, "-m", "rlhf.distributed", "--config_file", str(config_file)]
    command += ["-m", "rlhf", *args]
    print(
        f"distributed={d.name}: {n} processes: accelerate launch --config_file {config_file} -m rlhf {' '.join(args)}"
    )
    sys.stdout.flush()
    code = run(command)
    if code != 0 and fresh and run_dir.is_dir():
        left = {p.name for p in run_dir.iterdir()}
        if all(name in RUN_START_FILES or is_launch_file(name) for name in left):
            shutil.rmtree(run_dir)
    return code


def launch_job(cfg: DictConfig, overrides: list[str], job_dir: Path) -> float | None:
    """A sweep's job (-m) with a distributed preset: its own launch inside its directory; what it returns to
    the sweeper (the finished run's optimize_metric). Under hydra/launcher=slurm this runs in the job's
    allocation, so its processes use the GPUs Slurm gave it."""
    from rlhf import sweep

    # requeued after its warning stopped it: every rank resumes from the checkpoint that stop left
    again = ["resume=auto"] if sweep.requeued(job_dir) and not cfg.resume else []
    code = launch(cfg, [*overrides, *again, f"hydra.run.dir={job_dir}"], job_dir)
    summary = job_dir / "summary.json"
    if code != 0 or not summary.is_file():  # a crash: the sweep records it (failed.json) and goes on
        raise RuntimeError(f"accelerate launch in {job_dir} exited with status {code} and no summary.json")
    return sweep.objective(json.loads(summary.read_text()), cfg.optimize_metric)


def run(command: list[str]) -> int:
    """Run the launcher and wait for it; its exit status.

    A SIGINT or SIGTERM this process gets is passed on to the launcher, and this process goes on waiting:
    the launch's processes stop at a step boundary and checkpoint, and the launcher's status (128 + n) is
    returned once they have. A Ctrl-C at a terminal, or a signal to the whole process group, also reaches the
    launcher directly: it takes the two as one (rlhf.checkpoint.REPEAT_S).

    In a submitit job, its warning (rlhf.sweep.preempt_signals) is passed on the same way; once the launch has
    stopped, it goes to the handler that was there before, submitit's, which requeues the job (the requeued
    job resumes: launch_job).
    """
    from rlhf import sweep

    proc = subprocess.Popen(command)
    first = checkpoint.FirstSignal()

    def pass_on(signum: int, frame) -> None:
        if not first.repeats(signum):
            first.take(signum)
            proc.send_signal(signum)

    warning = sweep.preempt_signals()
    previous = {sig: signal.signal(sig, pass_on) for sig in (signal.SIGINT, signal.SIGTERM, *warning)}
    try:
        code = proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if first.signal in warning and callable(previous[first.signal]):
        previous[first.signal](first.signal, None)
    return code


def agent_signal_handler(handler):
    """torch's elastic agent's handler for a stop signal, made to take a signal delivered twice (by a scheduler
    that signals every process and by `run` passing it on) as one, and to pass a second request on to the
    training processes (each in a session of its own, so a terminal's second Ctrl-C reaches only the agent)
    before the agent stops waiting for them."""
    first = checkpoint.FirstSignal()

    def handle(signum: int, frame) -> None:
        if first.repeats(signum):
            return
        if first.signal is not None:  # a second request: the processes stop at once too
            import psutil

            for child in psutil.Process().children():
                child.send_signal(signum)
        first.take(signum)
        handler(signum, frame)  # raises SignalException: the agent shuts its processes down

    return handle


def launcher_main() -> None:
    """`accelerate launch <arguments>` as `launch` runs it: `python -m rlhf.distributed <arguments>`.

    torch's elastic agent, which accelerate starts the training processes with, runs each in a session of
    its own: a Ctrl-C (or a SIGTERM) reaches the agent, which passes it on to them once; they finish their
    step, checkpoint and exit 128 + n (rlhf.checkpoint.StopRequest). The agent would then end with a
    traceback and status 1, and kill them 30 s after the signal. Here it gives them STOP_GRACE_S (unless
    TORCH_ELASTIC_SHUTDOWN_TIMEOUT is set) and ends with 128 + n, as a one-process run does; a signal that
    reaches it twice counts once (agent_signal_handler). It gets a SIGTERM when the process that started it
    dies, and its processes a SIGKILL when it dies (rlhf.runtime.startup).
    """
    from torch.distributed.elastic.multiprocessing import api
    from torch.distributed.elastic.multiprocessing.api import SignalException

    from rlhf import sweep

    os.environ.setdefault("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", str(STOP_GRACE_S))
    warning = [signal.Signals(sig).name for sig in sweep.preempt_signals()]
    if warning:  # a submitit job's warning: the agent stops its processes on it as on a SIGTERM
        handled = os.environ.get("TORCHELASTIC_SIGNALS_TO_HANDLE", "SIGTERM,SIGINT,SIGHUP,SIGQUIT")
        os.environ["TORCHELASTIC_SIGNALS_TO_HANDLE"] = ",".join([handled, *warning])
    # the top `python -m rlhf` killed outright (kill -9 PID): its launch stops as on a SIGTERM, at a step
    # boundary with a checkpoint, instead of training on unattended (the ranks end with the agent: startup)
    die_with_parent(signal.SIGTERM)
    # PContext.start installs the module's handler by name when the processes start (torch 2.13; where it
    # is named otherwise, the agent keeps its own handler)
    if hasattr(api, "_terminate_process_handler"):
        api._terminate_process_handler = agent_signal_handler(api._terminate_process_handler)
        for name in warning:  # from now on, not only once the processes have started
            signal.signal(getattr(signal, name), api._terminate_process_handler)
    from accelerate.commands.launch import main

    try:
        main()
    except SignalException as e:
        sys.exit(128 + int(e.sigval))


if __name__ == "__main__":
    launcher_main()

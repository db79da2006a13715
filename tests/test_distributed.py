"""distributed=<preset>: the presets compose into configs accelerate (and DeepSpeed) accept, the method x
engine rules and the machine checks refuse before any process starts, and `python -m rlhf distributed=ddp`
and distributed=fsdp relaunch themselves on two CPU processes (gloo) with the same loss curve as one process at
the same global batch, rank 0 alone writing the run (FSDP's weights gathered onto it), and a stopped FSDP run
resumes.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from rlhf import checkpoint, distributed
from rlhf.errors import ConfigError, Problems
from rlhf.validate import validate
from tests.conftest import CONF, environment, process_env
from tests.test_checkpoint import signal_at_step
from tests.test_runtime import command_malloc

PRESETS = sorted(p.stem for p in (CONF / "distributed").glob("*.yaml"))
GPU_PROFILE = SimpleNamespace(name="a100", device="cuda", precision="bf16", load_in_4bit=False)
# the loss curves of one process and of two, at the same global batch: equal to float32 rounding
TOLERANCE = 1e-4
# their adapters, per tensor (relative, Frobenius): Adam turns rounding in a gradient near zero into a step of up
# to the learning rate (seen: 0.3% on one tensor after 3 steps); a shard, or an untrained tensor, is ~100% off
ADAPTER_TOLERANCE = 1e-2
# fp32 (no autocast, whichever CPU runs it), a learning rate the tiny model's loss moves with in 3 steps
TINY = ["model=tiny", "hardware=cpu", "hardware.precision=fp32", "eval=none", "logger=none"]
TINY += ["method.max_steps=3", "method.learning_rate=0.01", "method.warmup_ratio=0"]
# a run to stop part-way: 30 one-row steps, a checkpoint after each
STOPPABLE = [*TINY, "method.max_steps=30", "hardware.sft_batch_size=1", "hardware.sft_grad_accum=1"]
STOPPABLE += ["checkpoint.every=1"]


def test_the_group_has_the_documented_presets():
    assert PRESETS == ["ddp", "deepspeed-zero2", "deepspeed-zero3", "deepspeed-zero3-offload", "fsdp", "none"]


@pytest.mark.parametrize("preset", PRESETS)
def test_each_preset_composes_with_its_engine(make_cfg, preset):
    cfg = make_cfg(f"distributed={preset}")
    assert cfg.distributed.name == preset
    assert cfg.distributed.engine in distributed.ENGINES
    assert (cfg.distributed.engine == "deepspeed") == preset.startswith("deepspeed")


def test_which_methods_each_engine_runs(make_cfg):
    validate(make_cfg("distributed=ddp", "method=ppo"))  # every method runs data parallel
    validate(make_cfg("distributed=deepspeed-zero2", "method=dpo"))
    for method in ("lora", "sft", "dpo", "kto", "rm", "grpo", "rloo"):  # FSDP: gathered onto rank 0 to save
        validate(make_cfg("distributed=fsdp", f"method={method}"))
    for method in ("lora", "sft", "dpo", "kto", "rm", "grpo", "rloo"):  # ZeRO-3: gathered onto rank 0 too
        for preset in ("deepspeed-zero3", "deepspeed-zero3-offload"):
            validate(make_cfg(f"distributed={preset}", f"method={method}"))
    for preset in ("fsdp", "deepspeed-zero2", "deepspeed-zero3", "deepspeed-zero3-offload"):
        validate(make_cfg(f"distributed={preset}", "method=ppo"))  # a rollout's 20 passes: 4 steps of 5
    # ZeRO and FSDP keep the accumulated gradients: rollouts end on a step
    for preset, engine, holder in (("deepspeed-zero2", "DeepSpeed", "ZeRO"), ("fsdp", "FSDP", "FSDP")):
        with pytest.raises(ConfigError) as err:
            validate(make_cfg(f"distributed={preset}", "method=ppo", "method.gradient_accumulation_steps=3"))
        assert err.value.problems == [
            f"method.gradient_accumulation_steps=3: under {engine} a rollout's 20 mini-batch passes (ppo_epochs x "
            "batch_size / mini_batch_size) must end on an optimizer step: a checkpoint cannot hold the gradients "
            f"{holder} accumulates; fix: use a divisor of 20"
        ]
    for method in ("prompt-tuning", "prefix-tuning"):  # peft saves the virtual tokens outside any forward
        for preset in PRESETS:
            validate(
                make_cfg(f"distributed={preset}", f"method={method}", "hardware.gradient_checkpointing=false")
            )
    for preset in PRESETS:  # QLoRA: the 4-bit base whole in every process, or partitioned by ZeRO-3
        validate(make_cfg(f"distributed={preset}", "hardware=cpu", "hardware.load_in_4bit=true"))
    # packed in a float dtype (FSDP shards them): the dtype FSDP and DeepSpeed cast every float weight to
    packed = ["hardware=a100", "hardware.load_in_4bit=true"]
    validate(make_cfg("distributed=fsdp", *packed, "hardware.bnb_4bit_quant_storage=bfloat16"))
    validate(make_cfg("distributed=ddp", *packed, "hardware.bnb_4bit_quant_storage=float32"))
    for preset in ("fsdp", "deepspeed-zero3"):
        with pytest.raises(ConfigError) as err:
            validate(make_cfg(f"distributed={preset}", *packed, "hardware.bnb_4bit_quant_storage=float32"))
        assert err.value.problems == [
            f"hardware.bnb_4bit_quant_storage=float32: under distributed={preset} at precision bf16 every "
            "floating-point weight is cast to bfloat16, which rewrites 4-bit values packed in float32; fix: "
            "hardware.bnb_4bit_quant_storage=bfloat16, or uint8"
        ]


def test_inside_a_launch_the_launchers_engine_decides(make_cfg, tmp_path):
    """`accelerate launch --config_file <fsdp file> -m rlhf ...` typed by hand: the preset says none, the
    launch says FSDP, and the rule follows the launch."""
    (tmp_path / "ds.json").write_text(json.dumps({"zero_optimization": {"stage": 3}}))
    cfg = make_cfg("method=lora")
    for env, engine in [
        ({"LOCAL_RANK": "0", "WORLD_SIZE": "2"}, ("ddp", "ddp", 0)),
        ({"LOCAL_RANK": "0", "ACCELERATE_USE_FSDP": "true"}, ("fsdp", "fsdp", 0)),
        (
            {
                "WORLD_SIZE": "2",
                "ACCELERATE_USE_DEEPSPEED": "true",
                "ACCELERATE_DEEPSPEED_CONFIG_FILE": str(tmp_path / "ds.json"),
            },
            ("deepspeed-zero3", "deepspeed", 3),
        ),
    ]:
        with environment(env, drop=("ACCELERATE_", "LOCAL_RANK", "WORLD_SIZE")):
            assert distributed.inside_launch()
            assert distributed.in_effect(cfg) == engine
    with environment({}, drop=("ACCELERATE_", "LOCAL_RANK", "WORLD_SIZE")):
        assert not distributed.inside_launch() and distributed.in_effect(cfg) == ("none", "none", 0)


def test_machine_checks_name_key_value_and_fix(make_cfg):
    cpu = SimpleNamespace(name="cpu", device="cpu", precision="fp32", load_in_4bit=False)

    def problems(*overrides, hw=cpu, gpus=0, given=True):
        p = Problems()
        distributed.check_machine(make_cfg(*overrides).distributed, hw, gpus, given, p)
        return p.lines

    assert problems("distributed=ddp", "distributed.num_processes=2") == []
    assert problems("distributed=ddp")[0].startswith("distributed.num_processes=null: null means one process")
    assert problems("distributed=ddp", hw=GPU_PROFILE, gpus=4) == []
    assert (
        "2 are visible"
        in problems("distributed=ddp", "distributed.num_processes=4", hw=GPU_PROFILE, gpus=2)[0]
    )
    several = problems("distributed=ddp", "distributed.num_machines=2", hw=GPU_PROFILE, gpus=8, given=False)
    assert [line.split(":")[0] for line in several] == [
        "distributed.main_process_ip=null",
        "hydra.run.dir=null",
    ]
    for preset in ("fsdp", "deepspeed-zero2", "deepspeed-zero3"):  # each runs on CPU processes (gloo)
        assert problems(f"distributed={preset}", "distributed.num_processes=2") == []
    (line,) = problems(
        "distributed=deepspeed-zero3", "distributed.zero_stage=1", "distributed.num_processes=2"
    )
    assert line == "distributed.zero_stage=1: must be 2 or 3; fix: use 2 or 3"
    # FSDP's parameter offload moves weights off a GPU: on CPU processes torch stopped the launch with a traceback
    (line,) = problems("distributed=fsdp", "distributed.offload_params=true", "distributed.num_processes=2")
    assert line.startswith("distributed.offload_params=true: FSDP offloads parameters from GPUs into CPU RAM")
    assert problems("distributed=fsdp", "distributed.offload_params=true", hw=GPU_PROFILE, gpus=2) == []


def accelerate_launch_settings(config_file: Path):
    """What `accelerate launch --config_file F` makes of the file: its parsed arguments and the environment
    it gives each process (accelerate's own parsing; nothing is started)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    args = launch_command_parser().parse_args(["--config_file", str(config_file), "-m", "rlhf"])
    args, defaults, mixed_from_config = _validate_launch_command(args)
    if args.use_deepspeed:  # as launch_command does before the DeepSpeed launcher
        fields = [*defaults.deepspeed_config, *(["mixed_precision"] if mixed_from_config else [])]
        args.deepspeed_fields_from_accelerate_config = ",".join(fields)
        return args, prepare_deepspeed_cmd_env(args)[1]
    return args, prepare_multi_gpu_env(args)


@pytest.mark.parametrize("preset", [p for p in PRESETS if p != "none"])
def test_accelerate_accepts_each_presets_files(make_cfg, preset, tmp_path):
    """The files a GPU machine would get (4 processes, bf16): accelerate's launcher parses them, and its FSDP /
    DeepSpeed plugin builds from the environment it would hand each process."""
    from accelerate.utils import DeepSpeedPlugin, FullyShardedDataParallelPlugin, patch_environment

    d = make_cfg(f"distributed={preset}").distributed
    config_file = distributed.write_files(d, GPU_PROFILE, 4, tmp_path)
    assert config_file == tmp_path / "accelerate.yaml"
    args, env = accelerate_launch_settings(config_file)
    assert args.num_processes == 4 and args.num_machines == 1
    passed = {k: v for k, v in env.items() if k.startswith(("ACCELERATE_", "FSDP_"))}
    with patch_environment(**passed):
        if d.engine == "ddp":
            assert args.multi_gpu and env["ACCELERATE_MIXED_PRECISION"] == "bf16"
        elif d.engine == "fsdp":
            plugin = FullyShardedDataParallelPlugin()
            assert (plugin.fsdp_version, plugin.cpu_ram_efficient_loading) == (2, True)
            assert plugin.state_dict_type.name == "SHARDED_STATE_DICT" and plugin.reshard_after_forward
            assert env["ACCELERATE_MIXED_PRECISION"] == "bf16"
        else:
            plugin = DeepSpeedPlugin()
            assert plugin.zero_stage == d.zero_stage and plugin.zero3_init_flag == (d.zero_stage == 3)
            assert env["ACCELERATE_DEEPSPEED_CONFIG_FILE"] == str(tmp_path / "deepspeed.json")
            offloaded = plugin.deepspeed_config["zero_optimization"].get("offload_optimizer", {})
            assert offloaded.get("device", "none") == d.offload


def test_several_machines_go_into_the_accelerate_file(make_cfg, tmp_path):
    overrides = ["distributed=deepspeed-zero2", "distributed.num_processes=16", "distributed.num_machines=2"]
    overrides += ["distributed.machine_rank=1", "distributed.main_process_ip=10.0.0.1"]
    config_file = distributed.write_files(make_cfg(*overrides).distributed, GPU_PROFILE, 16, tmp_path)
    assert config_file.name == "accelerate-machine1.yaml"  # beside machine 0's, in the shared run directory
    args, env = accelerate_launch_settings(config_file)
    assert (args.num_processes, args.num_machines, args.machine_rank) == (16, 2, 1)
    assert (args.main_process_ip, args.main_process_port) == ("10.0.0.1", 29500)
    assert args.deepspeed_multinode_launcher == "standard"


@pytest.mark.parametrize("preset", ["deepspeed-zero2", "deepspeed-zero3", "deepspeed-zero3-offload"])
def test_deepspeed_accepts_each_json_once_the_trainer_fills_it(make_cfg, tiny, preset, tmp_path):
    """DeepSpeed's own config class, on the JSON as transformers' integration fills its "auto" values from a
    run's trainer arguments and model (what a trainer does on a GPU machine)."""
    pytest.importorskip("deepspeed")
    from deepspeed.runtime.config import DeepSpeedConfig
    from transformers import TrainingArguments
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig, unset_hf_deepspeed_config

    d = make_cfg(f"distributed={preset}").distributed
    ds = distributed.deepspeed_config(d)
    args = TrainingArguments(
        output_dir=str(tmp_path), use_cpu=True, per_device_train_batch_size=2, gradient_accumulation_steps=4,
        bf16=True, max_grad_norm=1.0, report_to=[],
    )  # fmt: skip
    model = tiny()[0]  # built before the ZeRO-3 config exists: it would build it sharded
    filled = HfTrainerDeepSpeedConfig(ds)
    try:  # the filled config registers itself process-wide (ZeRO-3 would change how later models load)
        filled.trainer_config_process(args)
        filled.trainer_config_finalize(args, model, num_training_steps=10)
        accepted = DeepSpeedConfig(filled.config)
    finally:
        unset_hf_deepspeed_config()
    assert accepted.zero_optimization_stage == d.zero_stage
    assert (accepted.train_micro_batch_size_per_gpu, accepted.gradient_accumulation_steps) == (2, 4)
    assert (
        accepted.train_batch_size == 8
        and accepted.gradient_clipping == 1.0
        and accepted.bfloat16_config.enabled
    )
    assert (accepted.zero_config.offload_optimizer is not None) == (d.offload == "cpu")


@pytest.mark.parametrize(
    "preset,starts",
    [
        ("deepspeed-zero3", "error: distributed.num_processes=null: null means one process per visible GPU"),
        ("fsdp", "error: distributed.num_processes=null: null means one process per visible GPU"),
        ("ddp", "error: distributed.num_processes=null: null means one process per visible GPU"),
    ],
)
def test_a_preset_this_machine_cannot_run_refuses_in_one_line(rlhf_cli, tmp_path, preset, starts):
    run = tmp_path / "run"
    out = rlhf_cli(f"distributed={preset}", "model=tiny", "hardware=cpu", f"hydra.run.dir={run}")
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines() == [out.stderr.strip()] and out.stderr.startswith(starts)
    assert "Traceback" not in out.stderr and not run.exists()


def curve(run: Path, key: str = "loss") -> list[tuple[int, float, float]]:
    """(step, epoch, value) of every training row of a run's metrics.jsonl."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["epoch"], r[key]) for r in rows if key in r]


def assert_same_curve(one: list, two: list) -> None:
    assert [(s, e) for s, e, _ in one] == [(s, e) for s, e, _ in two]  # same steps, same rows per step
    for (_, _, a), (_, _, b) in zip(one, two, strict=True):
        assert abs(a - b) <= TOLERANCE * max(1.0, abs(a)), (one, two)


def assert_rank0_wrote_the_run(run: Path, out, steps: int, engine: str = "ddp") -> None:
    assert out.returncode == 0, out.stderr[-3000:]
    assert len(curve(run)) == steps  # one row per step: rank 1 wrote none
    assert [p.name for p in run.glob("summary*.json")] == ["summary.json"]
    saved = {p.name for p in (run / "model").glob("*.safetensors")}
    assert saved in ({"adapter_model.safetensors"}, {"model.safetensors"})  # an adapter, or every weight
    assert out.stdout.count("\n  saved to ") == 1  # one run table: rank 0 alone saved, sampled and reported
    assert (run / "accelerate.yaml").is_file()
    assert (run / "deepspeed.json").exists() == engine.startswith("deepspeed")
    # FSDP's and DeepSpeed's checkpoints are their per-rank shards (the trainer writes them only when the
    # engine is in effect)
    sharded = sorted(p.name for p in (run / "checkpoints").glob("step-*/pytorch_model_fsdp_*"))
    assert bool(sharded) == (engine == "fsdp"), sharded
    zero = sorted(
        p.name for p in (run / "checkpoints").glob("step-*/global_step*/zero_pp_rank_*_optim_states.pt")
    )
    assert len(zero) == (2 if engine.startswith("deepspeed") else 0), zero


def two_processes(run_rlhf, run: Path, *overrides: str, engine: str = "ddp"):
    return run_rlhf(
        f"distributed={engine}", "distributed.num_processes=2", *overrides, f"hydra.run.dir={run}"
    )


def whole_and_stopped(run_rlhf, start_rlhf, tmp_path: Path, overrides: list[str], step: int, sig: int):
    """An uninterrupted run in tmp_path/whole, and the same run in tmp_path/stopped sent `sig` (to its process
    group, as a terminal or a scheduler does) at `step`: it exits 128 + sig without a traceback. The stopped
    run's directory and its interrupted.json."""
    whole = run_rlhf(*overrides, f"hydra.run.dir={tmp_path / 'whole'}")
    assert whole.returncode == 0, whole.stderr[-3000:]
    run = tmp_path / "stopped"
    proc = start_rlhf(*overrides, f"hydra.run.dir={run}")
    signal_at_step(run, step, lambda: os.killpg(proc.pid, sig)).join(timeout=300)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 128 + sig, stderr[-3000:]
    assert "Traceback" not in stderr
    return run, json.loads((run / "interrupted.json").read_text())


def adapter(run: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(run / "model" / "adapter_model.safetensors")


def assert_same_adapter(one: Path, two: Path) -> None:
    """model/ of both runs: the same tensors, each within ADAPTER_TOLERANCE of the other (FSDP's: gathered from
    both ranks), and trained (LoRA's B starts at zero)."""
    a, b = adapter(one), adapter(two)
    assert a.keys() == b.keys() and a
    for key in a:
        assert a[key].shape == b[key].shape, key
        assert (a[key] - b[key]).norm() <= ADAPTER_TOLERANCE * a[key].norm(), key
    assert all(a[key].abs().max() > 0 for key in a if "lora_B" in key)


@pytest.fixture(scope="module")
def one_process_lora(rlhf_cli, tmp_path_factory) -> Path:
    """The one-process run both engines' lora cases compare with: batch 1 x accumulation 2."""
    run = tmp_path_factory.mktemp("one") / "run"
    out = rlhf_cli(*TINY, "hardware.sft_batch_size=1", "hardware.sft_grad_accum=2", f"hydra.run.dir={run}")
    assert out.returncode == 0, out.stderr[-3000:]
    return run


@pytest.mark.parametrize(
    "engine", ["ddp", "fsdp", pytest.param("deepspeed-zero2", marks=pytest.mark.slow), "deepspeed-zero3"]
)
def test_lora_sft_on_two_processes_matches_one_process_at_the_same_global_batch(
    one_process_lora, run_rlhf, tmp_path, engine
):
    """2 processes x batch 1 against 1 process x batch 1 x accumulation 2: the same rows per step (accelerate
    shards one shuffled order), and transformers averages the loss over the tokens of all of them. Under FSDP
    each process holds half of every weight, and rank 0 saves the adapter gathered from both; under ZeRO-3
    likewise (DeepSpeed's CPU accelerator talks over gloo)."""
    two = two_processes(
        run_rlhf,
        tmp_path / "two",
        *TINY,
        "hardware.sft_batch_size=1",
        "hardware.sft_grad_accum=1",
        engine=engine,
    )
    assert_rank0_wrote_the_run(tmp_path / "two", two, steps=3, engine=engine)
    assert two.stdout.startswith(f"distributed={engine}: 2 processes: accelerate launch --config_file ")
    one = one_process_lora
    assert_same_curve(curve(one), curve(tmp_path / "two"))  # epochs equal: 2 rows a step in both
    assert curve(tmp_path / "two")[0][1] == 2 / 80  # the shipped set's 80 rows, 2 a step: two processes ran
    assert_same_curve(curve(one, "grad_norm"), curve(tmp_path / "two", "grad_norm"))
    assert_same_adapter(one, tmp_path / "two")
    # the launch's processes run on the allocator the command chose (tcmalloc where the machine has it)
    chosen = command_malloc(process_env(tmp_path))[0]
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["malloc"] == chosen
    # each process is the run's alone: it leaves out what it cannot use, DeepSpeed but under DeepSpeed
    kept = {"deepspeed"} if engine.startswith("deepspeed") else set()
    assert set(summary["libraries_left_out"]) == {"bitsandbytes", "deepspeed", "wandb"} - kept


@pytest.mark.slow
@pytest.mark.parametrize(
    "engine, storage",
    [("fsdp", "uint8"), ("fsdp", "float32"), ("deepspeed-zero2", "uint8"), ("deepspeed-zero3", "uint8")],
)
def test_qlora_on_two_processes_matches_one_process(rlhf_cli, run_rlhf, tmp_path, engine, storage):
    """QLoRA under FSDP2: accelerate leaves bitsandbytes' byte-packed 4-bit weights out of the shards (every
    process holds the whole 4-bit base) and shards the adapters; packed in float32 (the precision here), FSDP
    shards them too, and bitsandbytes gives each gathered weight its quantization state back. Under ZeRO-2,
    which partitions only what trains, the 4-bit base is whole in each; ZeRO-3 partitions every weight, the
    4-bit bytes too. The same curve and adapter as one process at the same global batch."""
    qlora = [*TINY, "hardware.load_in_4bit=true", "hardware.sft_batch_size=1"]
    qlora += [f"hardware.bnb_4bit_quant_storage={storage}"]
    one = tmp_path / "one"
    out = rlhf_cli(*qlora, "hardware.sft_grad_accum=2", f"hydra.run.dir={one}")
    assert out.returncode == 0, out.stderr[-3000:]
    two = two_processes(run_rlhf, tmp_path / "two", *qlora, "hardware.sft_grad_accum=1", engine=engine)
    assert_rank0_wrote_the_run(tmp_path / "two", two, steps=3, engine=engine)
    assert_same_curve(curve(one), curve(tmp_path / "two"))
    assert curve(tmp_path / "two")[0][1] == 2 / 80  # two rows a step: both processes trained
    assert_same_adapter(one, tmp_path / "two")
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert "bitsandbytes" not in summary["libraries_left_out"]


@pytest.mark.slow
def test_two_machines_train_one_run_as_one_process_does(one_process_lora, run_rlhf, start_rlhf, tmp_path):
    """distributed.num_machines=2: one launch per machine, each with its machine_rank, rank 0's at
    main_process_ip, the run directory shared. Here both machines are this one (127.0.0.1): the launches meet
    over TCP as two hosts' would. Machine 1 writes only its accelerate file; the run is rank 0's, with one
    process's curve and adapter at the same global batch."""
    run = tmp_path / "run"
    machines = [
        *TINY, "distributed=ddp", "distributed.num_processes=2", "distributed.num_machines=2",
        "distributed.main_process_ip=127.0.0.1", "distributed.main_process_port=29517",
        "hardware.sft_batch_size=1", "hardware.sft_grad_accum=1", f"hydra.run.dir={run}",
    ]  # fmt: skip
    first = start_rlhf(*machines, "distributed.machine_rank=0")
    second = run_rlhf(*machines, "distributed.machine_rank=1")
    out, err = first.communicate(timeout=600)
    assert first.returncode == 0, err[-3000:]
    assert second.returncode == 0, second.stderr[-3000:]
    assert "saved to" in out and "saved to" not in second.stdout  # rank 0 is on machine 0
    assert (run / "accelerate-machine1.yaml").is_file()
    assert_same_curve(curve(one_process_lora), curve(run))
    assert curve(run)[0][1] == 2 / 80  # two rows a step: a process on each machine
    assert_same_adapter(one_process_lora, run)


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["ddp", "fsdp", "deepspeed-zero3"])
def test_dpo_on_two_processes_matches_one_process_at_the_same_global_batch(
    rlhf_cli, run_rlhf, tmp_path, engine
):
    """2 processes x 1 pair against 1 process x 2 pairs: DPO's loss is the mean over pairs either way (the
    reference is the adapter disabled, under FSDP too)."""
    dpo = [*TINY, "method=dpo", "hardware.pref_grad_accum=1"]
    two = two_processes(run_rlhf, tmp_path / "two", *dpo, "hardware.pref_batch_size=1", engine=engine)
    assert_rank0_wrote_the_run(tmp_path / "two", two, steps=3, engine=engine)
    one = rlhf_cli(*dpo, "hardware.pref_batch_size=2", f"hydra.run.dir={tmp_path}/one")
    assert one.returncode == 0, one.stderr[-3000:]
    for key in ("loss", "rewards/margins", "grad_norm"):
        assert_same_curve(curve(tmp_path / "one", key), curve(tmp_path / "two", key))
    assert curve(tmp_path / "two")[-1][2] < curve(tmp_path / "two")[0][2]  # it learned something
    assert_same_adapter(tmp_path / "one", tmp_path / "two")


@pytest.mark.slow
def test_full_dpo_under_zero3_matches_one_process(rlhf_cli, run_rlhf, tmp_path):
    """Full fine-tuning DPO under ZeRO-3: the weights load partitioned (zero.Init) and the frozen reference is
    a copy partitioned the same way, each rank copying its own part; the curve and the gathered weights are
    one process's at the same global batch (the first loss is ln 2: the reference is the policy)."""
    dpo = [*TINY, "method=dpo", "method.adapter=none", "hardware.pref_grad_accum=1"]
    two = two_processes(
        run_rlhf, tmp_path / "two", *dpo, "hardware.pref_batch_size=1", engine="deepspeed-zero3"
    )
    assert two.returncode == 0, two.stderr[-3000:]
    one = rlhf_cli(*dpo, "hardware.pref_batch_size=2", f"hydra.run.dir={tmp_path}/one")
    assert one.returncode == 0, one.stderr[-3000:]
    for key in ("loss", "grad_norm"):
        assert_same_curve(curve(tmp_path / "one", key), curve(tmp_path / "two", key))
    assert curve(tmp_path / "two")[0][2] == pytest.approx(math.log(2), abs=1e-6)
    from safetensors.torch import load_file

    a = load_file(tmp_path / "one" / "model" / "model.safetensors")
    b = load_file(tmp_path / "two" / "model" / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch_close(a[k], b[k]) for k in a)


def torch_close(a, b) -> bool:
    return bool(((a - b).norm() <= TOLERANCE * max(a.norm(), 1e-12)).item())


@pytest.mark.slow
def test_fsdp_in_bf16_on_a_cpu_returns_float32_outputs_as_ddp_with_autocast_does(run_rlhf, tmp_path):
    """accelerate's FSDP policy would return bf16 outputs, and DPO's loss computed on them is bf16: its first
    value, where the policy is still the reference, is 0.69140625 instead of ln 2."""
    out = two_processes(
        run_rlhf, tmp_path / "run", "model=tiny", "hardware=cpu", "hardware.precision=bf16", "eval=none",
        "logger=none", "method=dpo", "method.max_steps=1", engine="fsdp",
    )  # fmt: skip
    assert_rank0_wrote_the_run(tmp_path / "run", out, steps=1, engine="fsdp")
    assert curve(tmp_path / "run")[0][2] == pytest.approx(math.log(2), abs=1e-6)


# full sft with the optimizer stepped in backward (rlhf.models.in_backward): no clipping, no accumulation
IN_BACKWARD = [
    "method=sft",
    "method.max_grad_norm=0",
    "hardware.sft_batch_size=1",
    "hardware.sft_grad_accum=1",
]


def test_under_fsdp_the_optimizer_in_backward_steps_each_shard_as_the_step_after_backward(run_rlhf, tmp_path):
    """distributed=fsdp, hardware.optimizer_in_backward=true: each process updates its shard of a weight in
    backward, once FSDP has reduced that layer's gradients (torch runs a shard's post-accumulate-grad hooks
    right after its reduce-scatter). Full sft on two processes: the curve and the saved weights of the step
    after backward, bit for bit, and the gradient norm summed over both processes' shards. The hooks go on the
    shards accelerate swaps into the optimizer: left on the weights it was built with, none ran (the norm was
    0) and the usual step did the update."""
    for way in ("after", "in"):
        out = two_processes(
            run_rlhf, tmp_path / way, *TINY, *IN_BACKWARD, f"hardware.optimizer_in_backward={way == 'in'}",
            engine="fsdp",
        )  # fmt: skip
        assert_rank0_wrote_the_run(tmp_path / way, out, steps=3, engine="fsdp")
    after, fused = tmp_path / "after", tmp_path / "in"
    assert curve(fused) == curve(after)
    norms = [(a[2], b[2]) for a, b in zip(curve(after, "grad_norm"), curve(fused, "grad_norm"), strict=True)]
    assert len(norms) == 3 and all(b > 0 and b == pytest.approx(a, rel=1e-5) for a, b in norms)
    one, two = weights(after), weights(fused)
    assert one.keys() == two.keys() and all(one[k].equal(two[k]) for k in one)


@pytest.mark.slow
def test_a_stopped_fsdp_run_with_the_optimizer_in_backward_resumes_to_the_same_end(
    run_rlhf, start_rlhf, tmp_path
):
    """The shards' optimizer state, saved by torch's distributed checkpoint through the step in backward (its
    load first builds a state by stepping zero gradients, which the wrapper passes to the optimizer): SIGINT at
    step 2, then resume=, ends on the uninterrupted run's curve and weights bit for bit."""
    overrides = [*STOPPABLE, *IN_BACKWARD, "hardware.optimizer_in_backward=true", "method.max_steps=8"]
    overrides += ["distributed=fsdp", "distributed.num_processes=2"]
    run, record = whole_and_stopped(run_rlhf, start_rlhf, tmp_path, overrides, 2, signal.SIGINT)
    assert 2 <= record["step"] < 8
    resumed = run_rlhf(f"resume={run}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((run / "summary.json").read_text())["resumed_from_step"] == record["step"]
    assert curve(run) == curve(tmp_path / "whole")
    one, two = weights(tmp_path / "whole"), weights(run)
    assert one.keys() == two.keys() and all(one[k].equal(two[k]) for k in one)


@pytest.mark.slow
@pytest.mark.parametrize(
    "engine, extra",
    [
        ("fsdp", []),
        ("deepspeed-zero3", []),
        # peft runs the prompt encoder to save it, outside any forward
        ("fsdp", ["method=prompt-tuning"]),
        ("fsdp", ["method=prefix-tuning", "hardware.gradient_checkpointing=false"]),
        ("deepspeed-zero3", ["method=prompt-tuning"]),  # ... on rank 0 alone under ZeRO-3
        ("deepspeed-zero3", ["method=prefix-tuning", "hardware.gradient_checkpointing=false"]),
        ("deepspeed-zero3", ["hardware.load_in_4bit=true"]),  # QLoRA: the 4-bit base partitioned too
    ],
    ids=[
        "fsdp",
        "zero3",
        "fsdp-prompt-tuning",
        "fsdp-prefix-tuning",
        "zero3-prompt-tuning",
        "zero3-prefix-tuning",
        "zero3-qlora",
    ],
)
def test_a_stopped_sharded_run_resumes_to_the_same_end(run_rlhf, start_rlhf, tmp_path, engine, extra):
    """Ctrl-C, as a terminal sends it (SIGINT to the launch's process group), at step 2 of a two-process FSDP
    (ZeRO-3) run: the launcher passes it on once, both ranks finish the step and write their shards, and the
    launch exits 130 without a traceback; resume= relaunches and ends on the uninterrupted run's curve and
    adapter."""
    overrides = [*STOPPABLE, *extra, f"distributed={engine}", "distributed.num_processes=2"]
    run, record = whole_and_stopped(run_rlhf, start_rlhf, tmp_path, overrides, 2, signal.SIGINT)
    assert 2 <= record["step"] < 30 and not (run / "model").exists()
    stopped_at = run / "checkpoints" / f"step-{record['step']}"
    assert sorted(p.name for p in stopped_at.glob("rng_state_*.pth")) == [
        "rng_state_0.pth",
        "rng_state_1.pth",
    ]

    resumed = run_rlhf(f"resume={run}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((run / "summary.json").read_text())["resumed_from_step"] == record["step"]
    assert curve(run) == curve(tmp_path / "whole")
    assert_same_adapter(tmp_path / "whole", run)


@pytest.mark.slow
@pytest.mark.parametrize("to", ["the process group", "the top process", "every process"])
def test_a_sigterm_stops_a_launch_at_a_step_boundary_whoever_gets_it(start_rlhf, tmp_path, to):
    """A scheduler's SIGTERM: a shell's `kill -- -PGID` reaches the top process and the launcher, `kill PID`
    the top process alone, Slurm every process of the job (the training processes get it from Slurm and from
    the launcher). Each way, the top process waits for the launch, the ranks finish the step, checkpoint and
    stop, and the command exits 128 + 15 with interrupted.json and nothing left running."""
    import psutil

    run = tmp_path / "stopped"
    proc = start_rlhf(*STOPPABLE, "distributed=ddp", "distributed.num_processes=2", f"hydra.run.dir={run}")
    top = psutil.Process(proc.pid)

    def send():
        if to == "the process group":
            os.killpg(proc.pid, signal.SIGTERM)
        elif to == "the top process":
            top.send_signal(signal.SIGTERM)
        else:
            for p in [top, *top.children(recursive=True)]:
                p.send_signal(signal.SIGTERM)

    children = []
    signal_at_step(run, 2, lambda: (children.extend(top.children(recursive=True)), send())).join(timeout=300)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    assert "Traceback" not in stderr
    record = json.loads((run / "interrupted.json").read_text())
    assert 2 <= record["step"] < 30 and not (run / "model").exists()
    stopped_at = run / "checkpoints" / f"step-{record['step']}"
    assert (stopped_at / checkpoint.MARKER).is_file()
    assert sorted(p.name for p in stopped_at.glob("rng_state_*.pth")) == [
        "rng_state_0.pth",
        "rng_state_1.pth",
    ]
    assert len(children) >= 3 and not [c for c in children if c.is_running() and c.status() != "zombie"]


@pytest.mark.slow
@pytest.mark.parametrize("to", ["the process group", "the top process"])
def test_a_killed_launch_leaves_no_rank_running_and_resumes_to_the_same_end(
    run_rlhf, start_rlhf, tmp_path, to
):
    """`kill -9` of the launch's process group: torch's agent runs each rank in a session of its own, and the
    ranks trained on unattended to the run's end; they now die with the agent. `kill -9` of the top process
    alone: the agent stops the launch as on a SIGTERM (a checkpoint, interrupted.json). Either way nothing is
    left running, and resume= ends on the uninterrupted run's curve and adapter."""
    import psutil

    overrides = [*STOPPABLE, "distributed=ddp", "distributed.num_processes=2"]
    whole = run_rlhf(*overrides, f"hydra.run.dir={tmp_path / 'whole'}")
    assert whole.returncode == 0, whole.stderr[-3000:]

    run = tmp_path / "killed"
    proc = start_rlhf(*overrides, f"hydra.run.dir={run}", output=subprocess.DEVNULL)
    top = psutil.Process(proc.pid)
    children = []

    def kill():
        children.extend(top.children(recursive=True))
        if to == "the process group":
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            top.kill()

    signal_at_step(run, 2, kill).join(timeout=300)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    gone, alive = psutil.wait_procs(children, timeout=120)
    assert len(children) >= 3 and not alive
    stopped = json.loads((run / "interrupted.json").read_text())["step"] if to == "the top process" else None
    assert not (run / "model").exists()
    last = max(checkpoint.step_of(c) for c in checkpoint.complete(run))
    assert last < 30 and (stopped is None or stopped == last)

    resumed = run_rlhf(f"resume={run}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((run / "summary.json").read_text())["resumed_from_step"] == last
    assert curve(run) == curve(tmp_path / "whole")
    assert_same_adapter(tmp_path / "whole", run)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["grpo", "ppo"])
def test_ddp_runs_the_rl_methods_on_two_processes(run_rlhf, tmp_path, method):
    run = tmp_path / "run"
    out = two_processes(
        run_rlhf,
        run,
        "model=tiny",
        "hardware=cpu",
        "eval=none",
        "logger=none",
        f"method={method}",
        "method.max_steps=2",
    )
    assert_rank0_wrote_the_run(run, out, steps=2)


# our PPO on two processes in float32: rollouts of 4, two mini-batch passes, one optimizer step each
PPO = [*TINY, "method=ppo", "method.batch_size=4", "method.mini_batch_size=2"]
PPO += ["method.ppo_epochs=1", "method.gradient_accumulation_steps=2", "distributed.num_processes=2"]


def weights(run: Path) -> dict:
    """The adapter and the value head a run saved."""
    from safetensors.torch import load_file

    return {
        f"{f.name}:{k}": v
        for f in sorted((run / "model").glob("*.safetensors"))
        for k, v in load_file(f).items()
    }


@pytest.mark.slow
def test_ppo_under_fsdp_and_deepspeed_follows_ddp(run_rlhf, tmp_path):
    """Our PPO's own accelerate loop under FSDP (every decoder layer gathered once for a rollout, the root's
    group at each pass; checkpoints hold the adapter and the optimizer whole), ZeRO-2, ZeRO-3 (whose
    weights each rank gathers to sample, and saves gathered) and ZeRO-3 with offload (DeepSpeed's AdamW with
    ours' settings): the same rollouts, losses and weights as ddp, to reduction order. Under ZeRO each rank
    checkpoints its part of the optimizer."""
    presets = ("ddp", "fsdp", "deepspeed-zero2", "deepspeed-zero3", "deepspeed-zero3-offload")
    for preset in presets:
        out = run_rlhf(
            *PPO, "method.max_steps=4", f"distributed={preset}", f"hydra.run.dir={tmp_path / preset}"
        )
        assert out.returncode == 0, out.stderr[-3000:]
    ddp = weights(tmp_path / "ddp")
    assert len(curve(tmp_path / "ddp")) == 4 and any("value_head" in k for k in ddp)
    for preset in presets[1:]:
        assert_same_curve(curve(tmp_path / "ddp"), curve(tmp_path / preset))
        theirs = weights(tmp_path / preset)
        assert ddp.keys() == theirs.keys()
        for key in ddp:
            assert (ddp[key] - theirs[key]).norm() <= 1e-4 * max(ddp[key].norm(), 1e-6), (preset, key)
        (last,) = checkpoint.complete(tmp_path / preset)
        parts = ["optimizer.pt"] if preset == "fsdp" else ["optimizer-0.pt", "optimizer-1.pt"]
        assert sorted(p.name for p in last.glob("optimizer*.pt")) == parts


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["ddp", "fsdp", "deepspeed-zero2", "deepspeed-zero3"])
def test_a_stopped_two_process_ppo_run_resumes_to_the_same_end(run_rlhf, start_rlhf, tmp_path, preset):
    """Each rank samples its rollouts from its own RNG, and each now checkpoints it (before, every rank resumed
    with rank 0's: the resumed ddp run parted from the uninterrupted one at step 5, its adapter 1.6e-4 off);
    under ZeRO each rank also saves its partition of the optimizer (ZeRO-3's float32 masters restore the
    weights)."""
    overrides = [*PPO, "method.max_steps=10", "checkpoint.every=1", f"distributed={preset}"]
    run, record = whole_and_stopped(run_rlhf, start_rlhf, tmp_path, overrides, 3, signal.SIGTERM)
    stopped = record["step"]
    assert 3 <= stopped < 10

    resumed = run_rlhf(f"resume={run}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((run / "summary.json").read_text())["resumed_from_step"] == stopped
    assert curve(run) == curve(tmp_path / "whole")
    one, two = weights(tmp_path / "whole"), weights(run)
    assert one.keys() == two.keys() and all(one[k].equal(two[k]) for k in one)


@pytest.mark.slow
def test_a_monitor_stop_on_rank_0_ends_every_rank_at_the_same_step(run_rlhf, tmp_path):
    """A TRL trainer logs on rank 0 only, so only rank 0's monitor sees the rule fire at step 2: the ranks
    agree at the step boundary, both save and stop there, and the run ends cleanly (without the agreement,
    rank 1 trained on alone and the launch died with SIGABRT in mismatched gloo collectives)."""
    run = tmp_path / "run"
    out = two_processes(
        run_rlhf, run, "model=tiny", "hardware=cpu", "eval=none", "logger=none", "method=grpo",
        "method.max_steps=6", "checkpoint.every=0",
        "+monitor.rules.stop_now={signal:response_length,condition:above,value:0,window:2,action:stop}",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["stopped_early"]["rule"] == "stop_now" and summary["stopped_early"]["step"] == 2
    assert summary["steps"] == 2 and (run / "checkpoints" / "step-2").is_dir()


@pytest.mark.slow
def test_a_sweeps_job_with_a_preset_launches_its_own_processes(run_rlhf, tmp_path):
    """-m: the job's task function relaunches it through accelerate inside its own directory (as a Slurm job
    with N GPUs would), and the sweeper gets its optimize_metric."""
    sweep = tmp_path / "sweep"
    out = run_rlhf("-m", "distributed=ddp", "distributed.num_processes=2", "model=tiny", "hardware=cpu", "eval=none",
                   "logger=none", "method.max_steps=1", f"hydra.sweep.dir={sweep}")  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    (job,) = [p.parent for p in sweep.glob("*/summary.json")]
    assert (job / "accelerate.yaml").is_file() and len(curve(job)) == 1
    assert "1 of 1 jobs finished" in out.stdout


@pytest.mark.slow
def test_a_two_job_sweep_through_submitit_local(run_rlhf, tmp_path):
    """hydra/launcher=submitit-local: the Slurm launcher's plugin, its jobs as local subprocesses."""
    sweep = tmp_path / "sweep"
    out = run_rlhf("-m", "hydra/launcher=submitit-local", "model=tiny", "method.max_steps=1", "eval=none",
                   "logger=none", "method.lora_r=4,8", f"hydra.sweep.dir={sweep}")  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert sorted(p.parent.name for p in sweep.glob("*/summary.json")) == ["0_lora_tiny", "1_lora_tiny"]
    assert (sweep / ".submitit").is_dir()


@pytest.mark.slow
@pytest.mark.parametrize(
    "preset,to", [("none", "the job's process"), ("ddp", "every process"), ("ddp", "the job's process")]
)
def test_a_submitit_jobs_warning_checkpoints_requeues_and_resumes(run_rlhf, start_rlhf, tmp_path, preset, to):
    """Slurm's warning before a time limit or a preemption (hydra/launcher=slurm sbatches --signal=USR2@120):
    the job's run finishes its step, checkpoints and hands the signal to submitit, which requeues the job; the
    requeued job resumes from that checkpoint and ends on the uninterrupted run's curve and adapter.
    submitit-local's executor requeues as Slurm does (its exit code 144). With distributed=ddp, Slurm signals
    every process of the job (the job's process, the launcher, the ranks), `scancel --signal=USR2 --batch` or
    submitit-local the job's process alone, which passes it on; the launcher does not die of it, and the job's
    process hands it to submitit once the launch has stopped (before, the launch died of the signal at once
    and the requeued job was refused: its directory held files)."""
    import psutil

    overrides = (
        [*STOPPABLE]
        if preset == "none"
        else [*STOPPABLE, f"distributed={preset}", "distributed.num_processes=2"]
    )
    whole = run_rlhf(*overrides, f"hydra.run.dir={tmp_path / 'whole'}")
    assert whole.returncode == 0, whole.stderr[-3000:]

    sweep = tmp_path / "sweep"
    proc = start_rlhf("-m", "hydra/launcher=submitit-local", *overrides, f"hydra.sweep.dir={sweep}")
    job = sweep / "0_lora_tiny"

    def warn():
        (submitted,) = [
            p
            for p in psutil.Process(proc.pid).children(recursive=True)
            if "submitit.core._submit" in " ".join(p.cmdline())
        ]
        for p in [submitted, *submitted.children(recursive=True)] if to == "every process" else [submitted]:
            p.send_signal(signal.SIGUSR2)

    signal_at_step(job, 2, warn).join(timeout=300)
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    logs = "".join(f.read_text() for f in (sweep / ".submitit").rglob("*_log.*"))
    assert "SIGUSR2: stopped after step" in logs and "Requeued job" in logs
    summary = json.loads((job / "summary.json").read_text())
    assert 2 <= summary["resumed_from_step"] < 30 and not (job / "interrupted.json").exists()
    assert curve(job) == curve(tmp_path / "whole")
    assert_same_adapter(tmp_path / "whole", job)


def test_no_launch_files_count_as_an_earlier_runs_files(tmp_path):
    """A run directory holding only what a launch wrote before it started may be given to the launch."""
    from rlhf.__main__ import check_run_dir

    (tmp_path / "accelerate.yaml").write_text("")
    (tmp_path / "deepspeed.json").write_text("{}")
    check_run_dir([f"hydra.run.dir={tmp_path}"])  # no error

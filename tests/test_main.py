"""`python -m rlhf` end to end on the tiny model (in-process: the real Hydra app): a complete run directory
whose model/ loads as it is; and under `accelerate launch` with two processes."""

from __future__ import annotations

import json

import pytest
import torch

from rlhf import methods
from tests.test_tracking import read_wandb_run

# what a default run's summary.json holds, in order (pinned: tools read these keys)
SUMMARY_KEYS = [
    "method", "model", "hardware", "precision", "data", "data_rows", "seed", "steps", "first_loss",
    "final_loss", "loss_start_mean", "loss_end_mean", "train_loss", "train_runtime_s", "train_tokens",
    "tokens_per_s", "trainable_params", "total_params", "trainable_share", "eval_loss", "eval", "eval_delta", "eval_significant", "peak_rss_mb",
    "malloc", "peak_rss_mb_by_stage",
    "wall_time_s", "data_truncated", "data_dropped", "resumed_from_step", "checkpoints_written", "checkpoint_seconds",
    "gpu", "libraries_left_out", "alarms", "stopped_early",
]  # fmt: skip


@pytest.fixture(scope="module")
def lora_run(rlhf_cli, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "lora"
    out = rlhf_cli("model=tiny", "method=lora", "method.max_steps=3", f"hydra.run.dir={run_dir}")
    assert out.returncode == 0, out.stderr[-3000:]
    return run_dir, out


def test_run_directory_is_complete(lora_run):
    run_dir, _ = lora_run
    assert (run_dir / ".hydra" / "config.yaml").is_file() and (
        run_dir / ".hydra" / "overrides.yaml"
    ).is_file()
    assert (run_dir / "model" / "adapter_model.safetensors").is_file()
    assert (run_dir / "model" / "tokenizer.json").is_file()
    assert (run_dir / "plots" / "loss.png").stat().st_size > 5_000
    assert not list(run_dir.rglob("*.bin")), "no pickles: safetensors, and weights-only torch state"
    assert not [p for p in (run_dir / "model").iterdir() if p.suffix in (".pt", ".pth")], "safetensors only"
    (step,) = [p for p in (run_dir / "checkpoints").iterdir() if p.name == "step-3"]  # at_end, by default
    torch.load(step / "optimizer.pt", weights_only=True)  # state tensors only: loads without running code


def test_summary_reports_what_users_compare(lora_run):
    run_dir, out = lora_run
    summary = json.loads((run_dir / "summary.json").read_text())
    assert list(summary) == SUMMARY_KEYS
    assert summary["steps"] == 3 and summary["hardware"] == "cpu"  # hardware=auto resolved on this machine
    # the shipped instruction set's held-out file: its loss at the last step, also in metrics.jsonl
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert summary["eval_loss"] == [m["eval_loss"] for m in metrics if "eval_loss" in m][-1] > 0
    assert "eval loss" in out.stdout
    assert summary["wall_time_s"] > 0 and summary["tokens_per_s"] > 0 and summary["peak_rss_mb"] > 100
    stages = summary["peak_rss_mb_by_stage"]  # training's peak apart from loading's and the eval stage's
    assert list(stages) == ["load", "train", "eval"] and min(stages.values()) > 100
    assert max(stages.values()) <= summary["peak_rss_mb"] + 1
    assert 0 < summary["trainable_params"] < summary["total_params"]
    assert summary["libraries_left_out"] == []  # a run inside a caller's process leaves nothing out
    assert summary["trainable_share"] == pytest.approx(
        summary["trainable_params"] / summary["total_params"], rel=1e-4
    )
    assert "tokens/s" in out.stdout and str(run_dir) in out.stdout  # the table at the end


def test_metrics_and_samples(lora_run):
    run_dir, _ = lora_run
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "loss" in m] == [1, 2, 3]
    samples = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    assert [s["stage"] for s in samples] == ["before"] * 4 + ["after"] * 4
    assert samples[0]["prompt"] == "Explain why the sky looks blue during the day."
    assert all(isinstance(s["completion"], str) for s in samples)


def test_saved_adapter_loads_with_autopeft(lora_run):
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoTokenizer

    run_dir, _ = lora_run
    model = AutoPeftModelForCausalLM.from_pretrained(run_dir / "model")
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "model")
    ids = tokenizer("The sky is", return_tensors="pt")["input_ids"]
    assert torch.isfinite(model(ids).logits).all()
    assert any("lora_B" in n and p.abs().sum() > 0 for n, p in model.named_parameters())


def test_full_sft_run_saves_a_plain_transformers_model(rlhf_cli, tmp_path):
    from transformers import AutoModelForCausalLM

    out = rlhf_cli(
        "model=tiny",
        "method=sft",
        "method.max_steps=2",
        "data=question-decomposition",
        f"hydra.run.dir={tmp_path}/sft",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "sft" / "model")
    summary = json.loads((tmp_path / "sft" / "summary.json").read_text())
    assert summary["trainable_params"] == summary["total_params"] == model.num_parameters()
    assert summary["data"] == "question-decomposition"


# every preference and RL method (those that take none of sft's formats), from the registry
@pytest.mark.parametrize(
    "method",
    [
        pytest.param(n, marks=[pytest.mark.slow] if n == "kto" else [])  # kto: dpo's path, another loss
        for n, m in methods.registry().items()
        if not set(m.DATA_FORMATS) & set(methods.get("sft").DATA_FORMATS)
    ],
)
def test_preference_and_rl_methods_write_a_complete_run(rlhf_cli, tmp_path, method):
    run_dir = tmp_path / method
    out = rlhf_cli(
        "model=tiny", f"method={method}", "method.max_steps=2", "eval.limit=2", f"hydra.run.dir={run_dir}"
    )
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["method"] == method and summary["steps"] == 2
    assert (run_dir / "model" / "adapter_model.safetensors").is_file()
    assert (run_dir / "plots" / "loss.png").is_file()
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "loss" in m] == [1, 2]
    wandb_run = read_wandb_run(run_dir)  # the same rows reach wandb, from TRL and from our PPO
    logs = "\n".join(p.read_text()[-3000:] for p in run_dir.glob("wandb/offline-run-*/logs/debug*.log"))
    assert [(r["_step"], r.get("loss")) for r in wandb_run["history"]] == [
        (m["step"], m["loss"]) for m in metrics if "loss" in m
    ], f"records: {wandb_run['records']}\n{logs}"
    module = methods.get(method)
    assert [summary[key] for key in module.RESULTS if summary.get(key) is None] == []
    if method == "ppo":  # the critic is saved beside the adapter, so it can be reused
        from safetensors.torch import load_file

        head = load_file(run_dir / "model" / "value_head.safetensors")
        assert head["weight"].shape[0] == 1 and "bias" in head
    if module.HEAD == "causal-lm":  # a reward model scores; it does not generate samples
        samples = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
        assert {s["stage"] for s in samples} == {"before", "after"}


@pytest.mark.slow  # the fast tier runs the same chain as pipeline=rlhf-three-stage (tests/test_pipeline.py)
def test_three_stages_chain_sft_rm_ppo(rlhf_cli, tmp_path):
    """sft -> rm -> ppo, each stage reading the previous one's output directory (README: three stages)."""
    sft = rlhf_cli(
        "model=tiny", "method=sft", "method.max_steps=2", "eval=none", f"hydra.run.dir={tmp_path}/sft"
    )
    assert sft.returncode == 0, sft.stderr[-2000:]
    policy = f"model.source=pretrained model.path={tmp_path}/sft/model".split()
    rm = rlhf_cli("model=tiny", *policy, "method=rm", "method.max_steps=2", f"hydra.run.dir={tmp_path}/rm")
    assert rm.returncode == 0, rm.stderr[-2000:]
    ppo = rlhf_cli(
        "model=tiny", *policy, "method=ppo", "method.max_steps=2", "reward=mix", "eval=none",
        f"reward.model_path={tmp_path}/rm/model", f"hydra.run.dir={tmp_path}/ppo",
    )  # fmt: skip
    assert ppo.returncode == 0, ppo.stderr[-2000:]
    rows = [json.loads(line) for line in (tmp_path / "ppo" / "metrics.jsonl").read_text().splitlines()]
    assert all("rewards/keyword" in r and "rewards/model" in r for r in rows)


@pytest.mark.slow
def test_under_two_processes_rank0_alone_evaluates_and_logs(run_rlhf, tmp_path):
    """distributed=ddp with 2 CPU processes (gloo), PPO: rank 0 alone writes the run, evaluates and logs."""
    run = tmp_path / "run"
    out = run_rlhf(
        "distributed=ddp", "distributed.num_processes=2", "model=tiny", "method=ppo", "method.max_steps=2",
        "eval.limit=2", f"hydra.run.dir={run}",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.startswith("distributed=ddp: 2 processes: accelerate launch")
    metrics = (run / "metrics.jsonl").read_text().splitlines()
    assert len(metrics) == 2  # one line per rollout, from rank 0 only
    assert (run / "model" / "adapter_model.safetensors").is_file()
    assert out.stdout.count("saved to") == 1
    assert len(list((run / "wandb").glob("offline-run-*"))) == 1  # only rank 0 logs to wandb
    # only rank 0 evaluates: one eval.json, one "Evaluating the tuned model" line
    assert (run / "eval.json").is_file() and not (run / "eval-2.json").exists()
    assert out.stdout.count("Evaluating the tuned model") == 1


ALL_OPTIONAL = {"bitsandbytes", "deepspeed", "wandb"}


@pytest.mark.parametrize(
    ("overrides", "kept"),
    [
        ([], set()),
        (["hardware.load_in_4bit=true"], {"bitsandbytes"}),  # QLoRA
        (["hardware.optim=paged_adamw_8bit"], {"bitsandbytes"}),  # bitsandbytes' optimizers
        (["hardware.optim=lion_32bit"], {"bitsandbytes"}),
        (["distributed=deepspeed-zero2"], {"deepspeed"}),
        (["logger=wandb"], {"wandb"}),
    ],
)
def test_a_run_leaves_out_only_the_libraries_its_settings_cannot_use(make_cfg, overrides, kept):
    from rlhf import config, train

    cfg = make_cfg("hardware=cpu", "logger=none", *overrides)
    hw = config.resolve_hardware(cfg.hardware)
    assert set(train.unused_libraries(cfg, hw)) == ALL_OPTIONAL - kept

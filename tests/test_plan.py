"""The memory plan: its terms add up and move as they should, the verdict and its fix, the CLI's exit status,
the model's numbers offline, plan.check, and which profile hardware=auto gives a GPU. No weights, no network:
the models are built on the meta device from their presets' architecture."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from rlhf import hardware, plan
from rlhf.errors import UserError
from tests.conftest import ROOT, in_process


def estimate(make_cfg, *overrides: str, **kwargs) -> plan.Estimate:
    cfg = make_cfg(*overrides)
    return plan.estimate(cfg, hardware.typed(cfg.hardware), **kwargs)


def term(est: plan.Estimate, name: str) -> float:
    return next(t.bytes for t in est.terms if t.name == name)


def test_the_terms_add_up_to_the_total(make_cfg):
    est = estimate(make_cfg, "model=llama-3.2-3b", "hardware=t4")
    assert est.total == pytest.approx(sum(t.bytes for t in est.terms))
    names = {t.name for t in est.terms}
    assert names >= {"weights", "adapter", "gradients", "optimizer states", "activations", "LM head (tiled)"}
    # generation and the training pass never overlap: the total holds the larger of the two
    ppo = estimate(make_cfg, "model=tinyllama-1.1b-chat", "hardware=t4", "method=ppo")
    held = sum(t.bytes for t in ppo.terms if not t.phase)
    phases = [sum(t.bytes for t in ppo.terms if t.phase == p) for p in ("train", "generate")]
    assert term(ppo, "generation KV cache") > 0 and ppo.total == pytest.approx(held + max(phases))
    assert term(ppo, "logits") > 0  # our ppo computes its completions' logits whole, TRL's trainers in tiles


def test_every_preset_carries_its_published_size(make_cfg):
    published = {  # parameters, from each model's card / config.json
        "llama-2-7b": 6.74e9,
        "llama-3.2-3b": 3.21e9,
        "mistral-7b": 7.24e9,
        "qwen2.5-3b": 3.09e9,
        "tinyllama-1.1b-chat": 1.10e9,
        "smollm2-135m": 134.5e6,
    }
    for name, params in published.items():
        cfg = make_cfg(f"model={name}")
        shape = plan.shape_from(plan.model_config(cfg.model, cfg.cache_dir))
        assert shape.params == pytest.approx(params, rel=0.01), name


def test_gradient_checkpointing_lowers_the_activations(make_cfg):
    args = ("model=llama-3.2-3b", "hardware=a100", "method=lora")
    off = estimate(make_cfg, *args, "hardware.gradient_checkpointing=false")
    on = estimate(make_cfg, *args, "hardware.gradient_checkpointing=true")
    assert term(on, "activations") < term(off, "activations") / 5
    assert term(on, "LM head (tiled)") == term(off, "LM head (tiled)")  # the head is not checkpointed


def test_4bit_weights_are_about_a_third_of_bf16(make_cfg):
    args = ("model=mistral-7b", "hardware=a100", "method=lora")
    bf16 = estimate(make_cfg, *args)
    nf4 = estimate(make_cfg, *args, "hardware.load_in_4bit=true")
    s = bf16.shape
    # the linear layers at 0.5 B + a float32 absmax per 64; embeddings, norms and lm_head stay bf16
    expected = (s.quantizable * (0.5 + 4 / 64) + (s.params - s.quantizable) * 2) / (s.params * 2)
    assert term(nf4, "weights") / term(bf16, "weights") == pytest.approx(expected, rel=1e-6)
    assert 3 < term(bf16, "weights") / term(nf4, "weights") < 4
    double = estimate(
        make_cfg, *args, "hardware.load_in_4bit=true", "hardware.bnb_4bit_use_double_quant=true"
    )
    assert term(double, "weights") < term(nf4, "weights")


def test_lora_holds_far_fewer_gradient_and_optimizer_bytes_than_full_fine_tuning(make_cfg):
    sft = estimate(make_cfg, "model=llama-3.2-3b", "hardware=a100", "method=sft")
    lora = estimate(make_cfg, "model=llama-3.2-3b", "hardware=a100", "method=lora")
    for name in ("gradients", "optimizer states"):
        assert term(lora, name) * 30 < term(sft, name)


def test_8bit_adamw_on_a_cpu_counts_the_float32_temporaries_of_its_update(make_cfg):
    args = ("model=smollm2-135m", "method=sft")
    cpu = ("hardware=cpu", "hardware.model_dtype=float32")  # what `auto` resolves to when every weight trains
    cpu32 = estimate(make_cfg, *args, *cpu)
    cpu8 = estimate(make_cfg, *args, *cpu, "hardware.optim=adamw_bnb_8bit")
    gpu8 = estimate(make_cfg, *args, "hardware=a100", "hardware.optim=adamw_bnb_8bit")
    assert term(cpu8, "optimizer states") == pytest.approx(term(cpu32, "optimizer states") / 4)
    # five float32 copies of the largest parameter (SmolLM2's 49152 x 576 embedding)
    assert term(cpu8, "8-bit update (CPU)") == pytest.approx(5 * 4 * 49152 * 576)
    # on SmolLM2 the temporaries take back most of what the 8-bit states save (bench/footprint.py: no lower)
    assert 0.9 * cpu32.total < cpu8.total < cpu32.total
    assert "8-bit update (CPU)" not in {t.name for t in gpu8.terms}  # bitsandbytes' CUDA kernels are fused


def test_dpo_full_fine_tuning_holds_a_reference_copy_and_dpo_lora_does_not(make_cfg):
    full = estimate(
        make_cfg, "model=tinyllama-1.1b-chat", "hardware=a100", "method=dpo", "method.adapter=none"
    )
    lora = estimate(make_cfg, "model=tinyllama-1.1b-chat", "hardware=a100", "method=dpo")
    assert term(full, "reference model") == pytest.approx(term(full, "weights"))
    assert term(lora, "reference model") == 0


def test_zero3_over_4_processes_divides_the_weights(make_cfg):
    one = estimate(make_cfg, "model=mistral-7b", "hardware=a100", "method=sft")
    zero3 = estimate(
        make_cfg, "model=mistral-7b", "hardware=a100", "method=sft", engine="deepspeed-zero3", num_processes=4
    )
    assert term(zero3, "weights") == pytest.approx(term(one, "weights") / 4)
    assert term(zero3, "activations") == term(one, "activations")  # each device still runs its own batch
    zero2 = plan.terms(one.shape, one.hw, one.work, "deepspeed-zero2", 4)
    assert term(zero2, "weights") == term(one, "weights") and term(zero2, "gradients") < term(
        one, "gradients"
    )


def test_qlora_on_a_cpu_counts_its_float32_matmul_outputs_and_the_adapters_16bit_copies(make_cfg):
    """On a CPU the 4-bit matmuls return float32 (bnb_4bit_compute_dtype) under bf16 autocast, so the MLP keeps
    float32 outputs and every adapter a bf16 copy of its float32 input (bench/activations.py
    hardware.load_in_4bit=true); where the compute dtype is autocast's (a GPU's bf16), LoRA's formula holds."""
    cpu = estimate(
        make_cfg,
        "hardware=cpu",
        "hardware.precision=bf16",
        "hardware.model_dtype=float32",
        "hardware.load_in_4bit=true",
    )
    assert cpu.quantized
    s = cpu.shape
    h, i = s.hidden, s.intermediate
    per_layer = plan.layer_bytes_per_token(s, "lora", 4, 2, lean=True, compute=4)
    assert per_layer == 8 * h + 4 * 2 * i + 2 * (5 * h + i) + 2 * 4 * h
    assert per_layer > plan.layer_bytes_per_token(s, "lora", 4, 2, lean=True)  # LoRA's 16-bit sizes
    assert "16-bit copy (autocast)" in next(t.how for t in cpu.terms if t.name == "activations")
    bf16 = plan.layer_bytes_per_token(s, "lora", 2, 2, lean=False, compute=2)
    assert bf16 == plan.layer_bytes_per_token(s, "lora", 2, 2, lean=False)


def test_qlora_under_fsdp_keeps_the_4bit_weights_whole_and_shards_the_rest(make_cfg):
    """FSDP2 (accelerate) leaves bitsandbytes' 4-bit weights out of its shards: each process holds them all."""
    one = estimate(make_cfg, "model=mistral-7b", "hardware=rtx4060-8gb", "method=lora")
    assert one.quantized
    four = plan.terms(one.shape, one.hw, one.work, "fsdp", 4)
    four_bit = one.shape.quantizable * plan.nf4_bytes(one.hw.bnb_4bit_use_double_quant)
    rest = term(one, "weights") - four_bit
    assert term(four, "weights") == pytest.approx(four_bit + rest / 4)
    assert term(four, "adapter") == pytest.approx(term(one, "adapter") / 4)
    assert "gathered layers" not in {t.name for t in four.terms}  # nothing of the 4-bit base is gathered
    assert "gathered layers" in {
        t.name for t in plan.terms(one.shape, one.hw, one.work, "deepspeed-zero3", 4).terms
    }


def test_qlora_packed_in_a_float_dtype_is_sharded_by_fsdp_as_the_rest(make_cfg):
    """hardware.bnb_4bit_quant_storage=bfloat16: FSDP shards the 4-bit weights too, and gathers a layer's."""
    args = ("model=mistral-7b", "hardware=rtx4060-8gb", "method=lora")
    one = estimate(make_cfg, *args, "hardware.bnb_4bit_quant_storage=bfloat16")
    four = plan.terms(one.shape, one.hw, one.work, "fsdp", 4)
    assert term(four, "weights") == pytest.approx(term(one, "weights") / 4)
    assert "gathered layers" in {t.name for t in four.terms}
    whole = plan.terms(one.shape, estimate(make_cfg, *args).hw, one.work, "fsdp", 4)
    assert term(four, "weights") < term(whole, "weights")


def test_fsdp_counts_the_roots_group_gathered_for_each_pass(make_cfg):
    """accelerate shards each decoder layer, then the model itself: FSDP2 gathers that root group (the embeddings,
    an untied output layer) for a whole forward and backward, beside the shard each process keeps."""
    one = estimate(make_cfg, "model=mistral-7b", "hardware=a100", "method=lora")
    s = one.shape
    assert s.lm_head  # mistral's output layer is not tied to its embeddings
    root = (s.vocab * s.hidden + s.lm_head) * plan.DTYPE_BYTES[one.hw.model_dtype]
    four = plan.terms(s, one.hw, one.work, "fsdp", 4)
    assert term(four, "gathered root") == pytest.approx(root * 3 / 4)
    assert "gathered root" not in {t.name for t in plan.terms(s, one.hw, one.work, "fsdp", 1).terms}
    assert "gathered root" not in {
        t.name for t in plan.terms(s, one.hw, one.work, "deepspeed-zero3", 4).terms
    }


@pytest.mark.parametrize("method", ["ppo", "grpo"])
def test_zero3_counts_the_whole_weights_each_process_gathers_to_sample(make_cfg, method):
    """ppo's loop and TRL's trainers gather ZeRO-3's shards to generate: the generation phase holds the whole
    weights. Under FSDP ppo gathers every layer once for a rollout (the root's group is gathered for every
    pass), while TRL's trainers generate layer by layer."""
    one = estimate(make_cfg, "model=mistral-7b", "hardware=a100", f"method={method}")
    zero3 = plan.terms(one.shape, one.hw, one.work, "deepspeed-zero3", 4)
    gathered = next(t for t in zero3.terms if t.name == "weights gathered to sample")
    assert gathered.phase == "generate"
    assert gathered.bytes + term(zero3, "weights") == pytest.approx(term(one, "weights"))
    fsdp = plan.terms(one.shape, one.hw, one.work, "fsdp", 4)
    sampling = [t for t in fsdp.terms if t.name == "weights gathered to sample"]
    if method == "ppo":
        (gathered,) = sampling
        assert gathered.phase == "generate"
        whole = gathered.bytes + term(fsdp, "weights") + term(fsdp, "gathered root")
        assert whole == pytest.approx(term(one, "weights"))
    else:
        assert not sampling
    assert not [t for t in one.terms if t.name.startswith("weights ")]


def test_a_shorter_longest_row_lowers_the_estimate(make_cfg):
    longest = estimate(make_cfg, "model=llama-3.2-3b", "hardware=t4")
    short = estimate(make_cfg, "model=llama-3.2-3b", "hardware=t4", tokens=100)
    assert short.work.tokens == 100 and short.total < longest.total


def plan_cli(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    from rlhf import cli
    from rlhf.plan import __main__ as entry

    return in_process(lambda a: cli.run(entry.main, a), list(argv), env or {})


def test_mistral_7b_full_fine_tuning_on_8gb_is_refused_in_one_line_with_its_fix(cache_dir):
    r = plan_cli("model=mistral-7b", "hardware=rtx4060-8gb", "method=sft", f"cache_dir={cache_dir}")
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("error: hardware=rtx4060-8gb: model=mistral-7b method=sft needs an estimated")
    assert "largest term: " in lines[0] and "fix: method=lora (est." in lines[0]
    assert "weights" in r.stdout and "total" in r.stdout  # the table came first


def test_a_user_hub_id_without_a_config_offline_is_one_line(cache_dir, tmp_path):
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    r = plan_cli("model=llama-2-7b", "model.path=someorg/their-model", f"cache_dir={cache_dir}", env=env)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("error: model.path=someorg/their-model: its config.json cannot be had offline")
    assert "; fix: " in lines[0]


def test_the_default_models_numbers_do_not_stand_for_another_model_path(cache_dir, tmp_path):
    """model.path=<a user's hub id> on the default preset: its numbers describe SmolLM2 (hub_id), so offline the
    plan says it cannot size the model (it planned a 135M model before); the numbers its fix names are used."""
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    user = ["model.source=pretrained", "model.path=someorg/their-model", f"cache_dir={cache_dir}"]
    # the memory the plan compares with, pinned: whether 8B fits would otherwise depend on this machine (its
    # RAM; float32 weights where the CPU has no bf16: 35.9 GB in all, over 23.5)
    user.append("hardware.memory_gb=64")
    r = plan_cli(*user, env=env)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stdout + r.stderr
    assert "someorg/their-model: its config.json cannot be had offline" in r.stderr
    assert "model.architecture={hub_id:someorg/their-model," in r.stderr  # the fix names the path
    numbers = "hidden_size:4096,intermediate_size:14336,num_hidden_layers:32,num_attention_heads:32"
    numbers += ",num_key_value_heads:8,vocab_size:128256,tie_word_embeddings:false"
    r = plan_cli(
        *user, f"model.architecture={{hub_id:someorg/their-model,model_type:llama,{numbers}}}", env=env
    )
    assert r.returncode == 0, r.stderr
    assert "(8.03B params)" in r.stdout.splitlines()[0]  # Llama-3.1-8B's numbers


def test_llama_3b_on_a_t4_prints_the_table_offline():
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    r = subprocess.run(
        [sys.executable, "-m", "rlhf.plan", "model=llama-3.2-3b", "hardware=t4"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "4-bit nf4" in out and "CUDA context + framework" in out and "per GPU with 2 / 4 / 8 GPUs" in out
    assert out.strip().splitlines()[-1].startswith("fits: ") and "of 14.7 GB" in out


def test_check_refuses_warns_and_is_skipped_with_plan_check_false(make_cfg, monkeypatch):
    monkeypatch.setattr(hardware, "gpu", lambda: None)  # on a GPU machine the run compares with that GPU
    args = ("model=mistral-7b", "hardware=rtx4060-8gb", "method=sft")
    cfg = make_cfg(*args)
    hw = hardware.typed(cfg.hardware)
    with pytest.raises(UserError, match=r"^hardware=rtx4060-8gb: .* fix: method=lora"):
        plan.check(cfg, hw)
    assert plan.check(make_cfg(*args, "plan.check=false"), hw) is None
    # above 90% of the device: a warning, and the run goes on
    est = estimate(make_cfg, "model=llama-3.2-3b", "hardware=t4")
    line = plan.verdict(est, est.total / 0.95 / plan.GiB, "a test GPU", "llama-3.2-3b")
    assert (
        line.startswith("warning: hardware=t4:") and "(95%)" in line and "if it runs out of memory: " in line
    )
    assert plan.verdict(est, est.total / 0.5 / plan.GiB, "a test GPU", "llama-3.2-3b").startswith("fits: ")


def test_the_fix_is_the_cheapest_that_fits(make_cfg):
    # a batch that is too large: a smaller one with more accumulation (the same effective batch)
    est = estimate(
        make_cfg, "model=llama-3.2-3b", "hardware=a100", "method=lora", "hardware.sft_batch_size=16"
    )
    fix = plan.cheapest_fix(est, 30 * plan.GiB)
    assert fix.startswith("hardware.sft_batch_size=") and "hardware.sft_grad_accum=" in fix
    batch, accum = (int(p.split("=")[1]) for p in fix.split(" (")[0].split())
    assert batch < 16 and batch * accum >= 16 * 2
    # at batch 1, where neither checkpointing nor 4-bit weights is enough alone: both, in that order
    one = estimate(make_cfg, "model=mistral-7b", "hardware=a100", "hardware.sft_batch_size=1")
    fix = plan.cheapest_fix(one, 10 * plan.GiB)
    assert fix.startswith("hardware.gradient_checkpointing=true hardware.load_in_4bit=true (est. "), fix
    # full fine-tuning of 7B on 8 GB: LoRA (QLoRA on that profile) before more GPUs
    full = estimate(make_cfg, "model=mistral-7b", "hardware=rtx4060-8gb", "method=sft")
    assert plan.cheapest_fix(full, 7.6 * plan.GiB).startswith("method=lora (est. ")


@pytest.mark.parametrize(
    ("name", "memory_gb", "bf16", "profile"),
    [
        ("Tesla T4", 14.7, False, "t4"),
        ("NVIDIA L4", 22.0, True, "l4"),
        ("NVIDIA A10G", 22.1, True, "a10g"),
        ("NVIDIA H100 80GB HBM3", 79.2, True, "h100"),
        ("NVIDIA GeForce RTX 4090", 23.6, True, "rtx4090"),
        ("NVIDIA GeForce RTX 4060 Laptop GPU", 8.0, True, "rtx4060-8gb"),
        ("NVIDIA A100-SXM4-80GB", 79.3, True, "a100"),
        ("NVIDIA A100-PCIE-40GB", 39.4, True, "a100"),
        ("NVIDIA L40S", 44.4, True, "a100"),  # not an L4: by memory, the largest profile it holds
        ("NVIDIA H200", 139.8, True, "h100"),
        ("NVIDIA GeForce RTX 3060", 11.8, True, "rtx4060-8gb"),
        ("NVIDIA RTX A4000", 15.7, True, "rtx4060-8gb"),  # bf16: not t4's fp16, though it has t4's memory
        ("NVIDIA GeForce RTX 3090", 23.6, True, "rtx4090"),
        ("Tesla V100-SXM2-32GB", 31.7, False, "t4"),  # no bf16: the fp16 profile
        ("NVIDIA GeForce GTX 1650", 3.8, True, "rtx4060-8gb"),  # less than any profile: the smallest
    ],
)
def test_auto_picks_a_profile_by_the_gpus_name_then_its_memory(name, memory_gb, bf16, profile):
    assert hardware.pick(name, memory_gb, bf16=bf16) == profile


def test_every_gpu_profile_states_its_memory():
    sizes = hardware.gpu_profiles()
    assert set(sizes) >= {"t4", "a100", "rtx4060-8gb", "l4", "a10g", "h100", "rtx4090"}
    assert all(0 < gb < 200 for gb in sizes.values())


def test_the_gpu_record_is_none_without_cuda():
    import torch

    if torch.cuda.is_available():
        record = hardware.gpu()
        assert set(record) == {"name", "memory_gb"} and record["memory_gb"] > 0
    else:
        assert hardware.gpu() is None


def test_the_optimizer_stepped_in_backward_holds_one_weights_gradient(make_cfg):
    """hardware.optimizer_in_backward=true: the gradients term is the largest trainable weight's (the embedding,
    for full fine-tuning), not every weight's; one process only (the rule refuses it under an engine)."""
    usual = estimate(make_cfg, "model=mistral-7b", "hardware=a100", "method=sft")
    fused = estimate(
        make_cfg, "model=mistral-7b", "hardware=a100", "method=sft", "hardware.optimizer_in_backward=true"
    )
    s = fused.shape
    largest = max(s.vocab * s.hidden, *(i * o for _, i, o in s.linear))
    assert term(fused, "gradients") == largest * plan.DTYPE_BYTES[fused.hw.model_dtype]
    assert term(usual, "gradients") > 50 * term(fused, "gradients")
    assert usual.total - fused.total == pytest.approx(term(usual, "gradients") - term(fused, "gradients"))
    under_ddp = plan.terms(s, fused.hw, fused.work, "ddp", 2)
    assert term(under_ddp, "gradients") == term(usual, "gradients")
    # under FSDP, one layer group's shards: mistral's root (its embeddings and untied output layer) over 4
    sharded, sharded_usual = (plan.terms(s, e.hw, e.work, "fsdp", 4) for e in (fused, usual))
    root = s.vocab * s.hidden + s.lm_head
    assert root > (s.params - root) / s.layers and s.lm_head > 0
    assert term(sharded, "gradients") == root * plan.DTYPE_BYTES[fused.hw.model_dtype] / 4
    assert term(sharded_usual, "gradients") > 25 * term(sharded, "gradients")


def test_a_fix_for_the_optimizer_in_backward_keeps_to_what_it_runs_with(make_cfg):
    """Its fixes neither accumulate (a smaller batch with more accumulation) nor move to DeepSpeed without
    turning it off: the rule would refuse the run they suggest."""
    over = ["model=mistral-7b", "hardware=a100", "method=sft", "method.max_grad_norm=0"]
    usual = estimate(make_cfg, *over)
    fused = estimate(make_cfg, *over, "hardware.optimizer_in_backward=true")
    budget = 39 * 2**30
    assert any("grad_accum" in text for _, text, _ in plan.fixes(usual, budget))
    texts = {kind: text for kind, text, _ in plan.fixes(fused, budget)}
    assert "batch" not in texts
    assert texts["zero3"].endswith(" hardware.optimizer_in_backward=false")
    assert texts["offload"].endswith(" hardware.optimizer_in_backward=false")

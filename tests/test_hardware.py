"""Each profile maps to the trainer arguments of PRODUCT.md; no TRL default leaks through."""

from __future__ import annotations

import pytest

from rlhf import hardware

# profile -> (bf16, fp16, batch, accumulation, checkpointing, optimizer, max length)
EXPECTED = {
    "t4": (False, True, 4, 4, True, "paged_adamw_32bit", 512),
    "a100": (True, False, 12, 2, False, "adamw_torch_fused", 1024),
    "rtx4060-8gb": (True, False, 1, 16, True, "paged_adamw_8bit", 256),
}
PREFERENCE = {"t4": (2, 8), "a100": (8, 2), "rtx4060-8gb": (1, 16)}


@pytest.mark.parametrize("profile", sorted(EXPECTED))
def test_gpu_profiles_map_to_the_documented_trainer_arguments(make_cfg, profile):
    hw = make_cfg(f"hardware={profile}").hardware
    args = hardware.trainer_args(hw)
    got = (
        args["bf16"],
        args["fp16"],
        args["per_device_train_batch_size"],
        args["gradient_accumulation_steps"],
        args["gradient_checkpointing"],
        args["optim"],
        args["max_length"],
    )
    assert got == EXPECTED[profile]
    assert args["activation_checkpointing"] == args["gradient_checkpointing"]
    assert args["use_cpu"] is False
    pref = hardware.trainer_args(hw, "pref")
    assert (pref["per_device_train_batch_size"], pref["gradient_accumulation_steps"]) == PREFERENCE[profile]
    assert args["tf32"] is (profile != "t4")


def test_quantization_follows_profile_and_model_size(make_cfg):
    t4 = make_cfg("hardware=t4").hardware
    assert hardware.quantization(t4, params_b=1.1) is None  # t4: 4-bit only from 3B up
    q = hardware.quantization(t4, params_b=3.2)
    assert q.load_in_4bit and q.bnb_4bit_quant_type == "nf4" and not q.bnb_4bit_use_double_quant
    rtx = hardware.quantization(make_cfg("hardware=rtx4060-8gb").hardware, params_b=0.1)
    assert rtx.load_in_4bit and rtx.bnb_4bit_use_double_quant
    assert hardware.quantization(make_cfg("hardware=a100").hardware, params_b=7) is None
    assert hardware.quantization(make_cfg("hardware=cpu").hardware, params_b=7) is None


def test_cpu_profile_reaches_the_trainer_config_without_trl_defaults(make_cfg, tmp_path):
    from trl import SFTConfig

    hw = make_cfg("hardware=cpu").hardware
    config = SFTConfig(output_dir=str(tmp_path), **hardware.trainer_args(hw))
    # TRL defaults: bf16=True and gradient_checkpointing=True; the profile decides both
    assert config.bf16 == (hardware.precision(hw) == "bf16")
    assert config.gradient_checkpointing is False and config.activation_checkpointing is False
    assert config.use_cpu and config.optim == "adamw_torch" and config.max_length == 512
    fp32 = SFTConfig(
        output_dir=str(tmp_path),
        **hardware.trainer_args(make_cfg("hardware=cpu", "hardware.precision=fp32").hardware),
    )
    assert fp32.bf16 is False and fp32.fp16 is False


def test_auto_picks_cpu_without_cuda():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert hardware.detect() == "cpu"

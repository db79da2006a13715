"""Profiles: quantization by model size, the typed resolved profile, and what hardware=auto picks."""

from __future__ import annotations

import pytest

from rlhf import hardware


def test_quantization_follows_profile_and_model_size(make_cfg):
    t4 = make_cfg("hardware=t4").hardware
    assert hardware.quantization(t4, params_b=1.1) is None  # t4: 4-bit only from 3B up
    q = hardware.quantization(t4, params_b=3.2)
    assert q.load_in_4bit and q.bnb_4bit_quant_type == "nf4" and not q.bnb_4bit_use_double_quant
    rtx = hardware.quantization(make_cfg("hardware=rtx4060-8gb").hardware, params_b=0.1)
    assert rtx.load_in_4bit and rtx.bnb_4bit_use_double_quant
    assert hardware.quantization(make_cfg("hardware=a100").hardware, params_b=7) is None
    assert hardware.quantization(make_cfg("hardware=cpu").hardware, params_b=7) is None


def test_a_resolved_profile_is_typed_and_its_precision_concrete(make_cfg):
    from rlhf.schema import HardwareConfig

    hw = hardware.resolve(make_cfg("hardware=cpu").hardware)
    assert isinstance(hw, HardwareConfig) and hw.name == "cpu"
    assert hw.precision in ("bf16", "fp32")  # auto: bf16 where this CPU computes it natively
    assert hardware.resolve(make_cfg("hardware=cpu", "hardware.precision=fp32").hardware).precision == "fp32"


def test_auto_resolves_to_this_machines_profile_with_the_users_keys(make_cfg):
    from rlhf import config

    hw = config.resolve_hardware(make_cfg().hardware, ["hardware.max_seq_length=128"])
    assert hw.name == hardware.detect() and hw.max_seq_length == 128


def test_auto_keeps_the_hardware_keys_an_experiment_sets(make_cfg):
    """experiment=sft-low-memory under hardware=auto: the picked profile gets the experiment's optimizer,
    checkpointing and optimizer in backward, and a command line key still wins over the experiment's."""
    from rlhf import config

    given = ["experiment=sft-low-memory", "hardware.gradient_checkpointing=false"]
    hw = config.resolve_hardware(make_cfg(*given).hardware, given)
    assert hw.name == hardware.detect()
    assert (hw.optim, hw.optimizer_in_backward, hw.gradient_checkpointing) == ("adafactor", True, False)


def test_auto_picks_cpu_without_cuda():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert hardware.detect() == "cpu"

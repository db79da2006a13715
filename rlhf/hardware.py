"""Hardware profile -> the exact arguments the trainers receive, and `auto` detection.

A profile sets every precision, quantization, batch, accumulation, checkpointing, optimizer and
sequence-length argument itself: TRL's configs default to bf16=True and gradient checkpointing on, even on a
CPU, so nothing may be left to their defaults.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from rlhf.errors import UserError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve(hw: DictConfig, overrides: list[str] | None = None) -> DictConfig:
    """The profile to run with: `auto` becomes a concrete profile; a CUDA profile needs CUDA.

    `overrides`: the command line's, where no Hydra app is running (an app's own are read from Hydra).
    """
    if hw.name == "auto":
        hw = _compose_profile(detect(), hw, overrides)
    if hw.device == "cuda" and not torch.cuda.is_available():
        raise UserError(
            f"hardware={hw.name}: this profile needs a CUDA GPU and none is visible; "
            "fix: use hardware=cpu or hardware=auto"
        )
    return hw


def detect() -> str:
    """The profile that matches this machine's first GPU, or cpu."""
    if not torch.cuda.is_available():
        return "cpu"
    props = torch.cuda.get_device_properties(0)
    name, memory_gb = props.name.lower(), props.total_memory / 2**30
    if "t4" in name or not torch.cuda.is_bf16_supported():
        return "t4"
    if memory_gb <= 12:
        return "rtx4060-8gb"
    return "a100"


def _compose_profile(name: str, auto: DictConfig, overrides: list[str] | None) -> DictConfig:
    """Compose hardware=<name> with the user's hardware.* overrides, as if they had asked for it."""
    from hydra import compose
    from hydra.core.hydra_config import HydraConfig

    given = HydraConfig.get().overrides.task if HydraConfig.initialized() else overrides or []
    keys = [o for o in given if o.lstrip("+~").startswith("hardware.")]
    picked = compose(config_name="config", overrides=[f"hardware={name}", *keys]).hardware
    OmegaConf.set_readonly(picked, OmegaConf.is_readonly(auto))
    return picked


def device(hw: DictConfig) -> str:
    if hw.device == "cpu":
        return "cpu"
    return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"


def precision(hw: DictConfig) -> str:
    """fp32 / bf16 / fp16; `auto` is bf16 where the device computes it natively, else fp32."""
    if hw.precision != "auto":
        return hw.precision
    if hw.device == "cpu":
        return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def trainer_args(hw: DictConfig, kind: str = "sft") -> dict[str, Any]:
    """TrainingArguments fields owned by the profile. `kind` is sft (sft / lora / prompt tuning) or pref."""
    amp = precision(hw)
    checkpointing = hw.gradient_checkpointing
    return {
        "use_cpu": hw.device == "cpu",
        "bf16": amp == "bf16",
        "fp16": amp == "fp16",
        "tf32": hw.tf32 if hw.device == "cuda" else None,
        "per_device_train_batch_size": hw[f"{kind}_batch_size"],
        "gradient_accumulation_steps": hw[f"{kind}_grad_accum"],
        # transformers 5 renamed gradient_checkpointing; TRL still defaults the old name to True: set both
        "activation_checkpointing": checkpointing,
        "gradient_checkpointing": checkpointing,
        "gradient_checkpointing_kwargs": {"use_reentrant": False} if checkpointing else None,
        "optim": hw.optim,
        "max_length": hw.max_seq_length,
        "dataloader_num_workers": hw.dataloader_num_workers,
    }


def quantization(hw: DictConfig, params_b: float):
    """A BitsAndBytesConfig when the profile quantizes a model of this size, else None."""
    if not hw.load_in_4bit or params_b < hw.quantize_min_params_b:
        return None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=hw.bnb_4bit_quant_type,
        bnb_4bit_use_double_quant=hw.bnb_4bit_use_double_quant,
        bnb_4bit_compute_dtype=DTYPES[hw.bnb_4bit_compute_dtype],
    )

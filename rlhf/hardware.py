"""Hardware profiles: the resolved profile a run trains with, and which profile this machine gets.

A profile sets every precision, quantization, batch, accumulation, checkpointing, optimizer and
sequence-length argument itself (rlhf.methods._common.trainer_args turns it into trainer arguments): TRL's
configs default to bf16=True and gradient checkpointing on, even on a CPU, so nothing is left to them.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from omegaconf import DictConfig, OmegaConf

from rlhf.errors import UserError
from rlhf.schema import HardwareConfig


def resolve(node: DictConfig) -> HardwareConfig:
    """The profile to run with, as a typed object whose precision is concrete (fp32 / bf16 / fp16).

    `node` is a concrete profile (rlhf.config.resolve_hardware picks one for hardware=auto); a CUDA
    profile needs CUDA.
    """
    import torch

    if isinstance(node, DictConfig):  # a composed node, or one read back from a run's .hydra/config.yaml
        node = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(HardwareConfig), node))
    profile = node
    if profile.device == "cuda" and not torch.cuda.is_available():
        raise UserError(
            f"hardware={profile.name}: this profile needs a CUDA GPU and none is visible; "
            "fix: use hardware=cpu or hardware=auto"
        )
    return dataclasses.replace(profile, precision=concrete_precision(profile))


def detect() -> str:
    """The profile that matches this machine's first GPU, or cpu."""
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    props = torch.cuda.get_device_properties(0)
    name, memory_gb = props.name.lower(), props.total_memory / 2**30
    if "t4" in name or not torch.cuda.is_bf16_supported():
        return "t4"
    if memory_gb <= 12:
        return "rtx4060-8gb"
    return "a100"


def concrete_precision(hw: Any) -> str:
    """fp32 / bf16 / fp16; `auto` is bf16 where the device computes it natively, else fp32."""
    import torch

    if hw.precision != "auto":
        return hw.precision
    if hw.device == "cpu":
        return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def dtype(name: str):
    """float32 / bfloat16 / float16 -> the torch dtype."""
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def device(hw: Any) -> str:
    if hw.device == "cpu":
        return "cpu"
    return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"


def quantization(hw: Any, params_b: float):
    """A BitsAndBytesConfig when the profile quantizes a model of this size, else None."""
    if not hw.load_in_4bit or params_b < hw.quantize_min_params_b:
        return None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=hw.bnb_4bit_quant_type,
        bnb_4bit_use_double_quant=hw.bnb_4bit_use_double_quant,
        bnb_4bit_compute_dtype=dtype(hw.bnb_4bit_compute_dtype),
    )

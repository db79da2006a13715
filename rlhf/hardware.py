"""Hardware profiles: the resolved profile a run trains with, and which profile this machine gets.

A profile sets every precision, quantization, batch, accumulation, checkpointing, optimizer and
sequence-length argument itself (rlhf.methods._common.trainer_args turns it into trainer arguments): TRL's
configs default to bf16=True and gradient checkpointing on, even on a CPU, so nothing is left to them.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from rlhf.errors import UserError
from rlhf.schema import HardwareConfig


def resolve(node: DictConfig, frozen_base: bool = True) -> HardwareConfig:
    """The profile to run with, as a typed object whose precision and model dtype are concrete.

    `node` is a concrete profile (rlhf.config.resolve_hardware picks one for hardware=auto); a CUDA
    profile needs CUDA. `frozen_base`: the base weights do not train (an adapter does, or nothing trains:
    evaluation, generation) and may load in 16 bits; False for full fine-tuning and for a method that keeps
    a float32 base (rlhf.methods.frozen_base). See `concrete_model_dtype`.
    """
    import torch

    profile = typed(node)
    if profile.device == "cuda" and not torch.cuda.is_available():
        raise UserError(
            f"hardware={profile.name}: this profile needs a CUDA GPU and none is visible; "
            "fix: use hardware=cpu or hardware=auto"
        )
    precision = concrete_precision(profile)
    return dataclasses.replace(
        profile, precision=precision, model_dtype=concrete_model_dtype(profile, precision, frozen_base)
    )


def concrete_model_dtype(hw: HardwareConfig, precision: str, frozen_base: bool) -> str:
    """`model_dtype: auto` (the cpu profile): bfloat16 for a frozen base under bf16, else float32.

    Under bf16 autocast every matmul runs in bf16 anyway; a float32 base adds its bf16 copies (autocast's
    cache) on top of the float32 weights, so a frozen base loaded in bf16 holds a third of that memory and
    skips the casts (LoRA SFT on SmolLM2-135M, 2-core AVX-512 CPU: training's peak 1.88 -> 1.49 GB, 2.48 ->
    2.24 s/step). The adapter stays float32 (peft's autocast_adapter_dtype; rlhf.models.upcast_trainable).
    Weights that train (full fine-tuning) stay float32 master weights, and so does a 4-bit model's rest.
    """
    if hw.model_dtype != "auto":
        return hw.model_dtype
    return "bfloat16" if precision == "bf16" and frozen_base and not hw.load_in_4bit else "float32"


def typed(node: DictConfig | HardwareConfig) -> HardwareConfig:
    """A profile node as the typed object, as composed (precision may still be auto; no device is checked)."""
    if isinstance(node, DictConfig):  # a composed node, or one read back from a run's .hydra/config.yaml
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(HardwareConfig), node))
    return node


def detect() -> str:
    """The profile that matches this machine's first GPU, or cpu."""
    import torch

    seen = gpu()
    if seen is None:
        return "cpu"
    return pick(seen["name"], seen["memory_gb"], bf16=torch.cuda.is_bf16_supported())


def gpu() -> dict[str, Any] | None:
    """{"name", "memory_gb"} of this machine's first GPU (memory in GiB, as torch reports it), or None."""
    import torch

    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    return {"name": props.name, "memory_gb": round(props.total_memory / 2**30, 1)}


# conf/hardware (rlhf.config.CONF / "hardware"; config imports this module, so the path is spelled here)
PROFILES = Path(__file__).resolve().parent.parent / "conf" / "hardware"
# a GPU's name (as torch reports it, lower case) -> its own profile; word boundaries keep L40S off l4 and A100 off a10g
NAMED = {
    r"\bt4\b": "t4",
    r"\bl4\b": "l4",
    r"\ba10g\b": "a10g",
    r"\bh100\b": "h100",
    r"\brtx 4090\b": "rtx4090",
    r"\brtx 4060\b": "rtx4060-8gb",
    r"\ba100\b": "a100",
}


def pick(name: str, memory_gb: float, bf16: bool = True) -> str:
    """The profile hardware=auto gives a GPU: the one named after it, else for a GPU without bf16 the fp16
    profile t4, else the bf16 profile with the most memory_gb that the GPU has (the smallest if it has less)."""
    for pattern, profile in NAMED.items():
        if re.search(pattern, name.lower()):
            return profile
    if not bf16:
        return "t4"
    sizes = gpu_profiles(bf16=True)
    fitting = [p for p, gb in sizes.items() if gb <= memory_gb]
    if not fitting:
        return min(sizes, key=sizes.get)
    return max(fitting, key=lambda p: (sizes[p], p))


def gpu_profiles(bf16: bool | None = None) -> dict[str, float]:
    """Each CUDA profile's memory_gb, read from its YAML (conf/hardware/<name>.yaml); bf16=True: only those
    that compute in bf16 (t4's fp16 is for GPUs without it)."""
    sizes = {}
    for path in sorted(PROFILES.glob("*.yaml")):
        node = OmegaConf.load(path)
        if node.get("device") != "cuda" or node.get("memory_gb") is None:
            continue
        if bf16 is None or (node.get("precision") == "bf16") == bf16:
            sizes[path.stem] = float(node.memory_gb)
    return sizes


def concrete_precision(hw: Any) -> str:
    """fp32 / bf16 / fp16; `auto` is bf16 where the device computes it natively, else fp32."""
    import torch

    if hw.precision != "auto":
        return hw.precision
    if hw.device == "cpu":
        return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def dtype(name: str):
    """float32 / bfloat16 / float16 / uint8 -> the torch dtype."""
    import torch

    return {
        "float32": torch.float32,
        "bfloat16": torch.bfloat16,
        "float16": torch.float16,
        "uint8": torch.uint8,
    }[name]


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
        bnb_4bit_quant_storage=dtype(hw.bnb_4bit_quant_storage),
    )

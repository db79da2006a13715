"""Models that DeepSpeed ZeRO-3 or FSDP holds partitioned across a launch's processes: under ZeRO-3 built that
way from the start; made whole for a block where one rank alone needs the weights, or where every rank samples
(ppo); and whole copies of their parameters."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

from rlhf.runtime import launch_engine, launch_zero_stage

_ZERO3_LOAD = None  # transformers keeps only a weak reference to the config that turns zero.Init on


def load_partitioned(model_config: Any, precision: str) -> bool:
    """Inside a ZeRO-3 launch, have transformers build the model's weights partitioned across the processes
    (deepspeed.zero.Init), as it does once a trainer's DeepSpeed config exists; rlhf loads the model before
    the trainer, so no process then holds it whole. True when it does (the model then loads without a
    device_map: DeepSpeed places it). Only ZeRO's own section and the dtype matter to zero.Init; the batch
    entries are placeholders its parser needs, replaced by the trainer's config."""
    global _ZERO3_LOAD
    hidden = getattr(model_config, "hidden_size", None)
    if not (launch_engine() == "deepspeed" and launch_zero_stage() == 3 and isinstance(hidden, int)):
        return False
    from transformers.integrations import HfDeepSpeedConfig

    path = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE", "")
    ds = json.loads(Path(path).read_text()) if path and Path(path).is_file() else {}
    zero = {**ds.get("zero_optimization", {}), "stage": 3}
    sizes = {  # transformers' own values for these "auto" entries
        "reduce_bucket_size": hidden * hidden,
        "stage3_prefetch_bucket_size": int(0.9 * hidden * hidden),
        "stage3_param_persistence_threshold": 10 * hidden,
    }
    zero.update({k: v for k, v in sizes.items() if zero.get(k, "auto") == "auto"})
    _ZERO3_LOAD = HfDeepSpeedConfig(
        {
            "train_micro_batch_size_per_gpu": 1,
            "gradient_accumulation_steps": 1,
            "bf16": {"enabled": precision == "bf16"},
            "fp16": {"enabled": precision == "fp16"},
            "zero_optimization": zero,
        }
    )
    return True


def is_partitioned(model) -> bool:
    """Whether ZeRO-3 holds the model's weights partitioned."""
    return any_partitioned(model.parameters())


def any_partitioned(params) -> bool:
    """Whether ZeRO-3 holds any of these parameters partitioned (DeepSpeed marks each such one with an id)."""
    return any(hasattr(p, "ds_id") for p in params)


@contextlib.contextmanager
def gathered(params: list):
    """These parameters whole in each process for the block where ZeRO-3 partitions them (a collective: every
    rank enters it); otherwise nothing."""
    if not any_partitioned(params):
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
        yield


def is_sharded(model) -> bool:
    """Whether FSDP (torch's fully_shard, as accelerate applies it) shards the model's weights."""
    from torch.distributed.fsdp import FSDPModule

    return any(isinstance(m, FSDPModule) for m in model.modules())


def whole_copies(named: dict[str, Any]) -> dict[str, Any]:
    """CPU copies of these parameters, whole where ZeRO-3 partitions or FSDP shards them (a collective: every
    rank calls it, with the same parameters in the same order)."""
    from torch.distributed.tensor import DTensor

    with gathered(list(named.values())):
        whole = {name: p.full_tensor() if isinstance(p, DTensor) else p for name, p in named.items()}
        return {name: p.detach().to("cpu", copy=True).contiguous() for name, p in whole.items()}


@contextlib.contextmanager
def whole_weights(model, reshard_after_forward: bool = True):
    """Every weight of a ZeRO-3-partitioned model whole in each process for the block (a collective: every
    rank enters it), so rank 0 can score and sample the base model on its own. Under FSDP every layer's
    weights whole for the block, each gathered once rather than at every decoding step, then sharded again
    (`reshard_after_forward`: the preset's); the root's own group is gathered by its forward, which every
    pass goes through. Otherwise nothing."""
    if is_sharded(model):
        with whole_layers(model, reshard_after_forward):
            yield model
        return
    if not is_partitioned(model):
        yield model
        return
    from transformers.integrations import deepspeed as hf_deepspeed

    # rank 0 runs alone in the block: transformers would otherwise take ZeRO-3 as in effect and generate with
    # synced_gpus (a collective each token, which the other ranks never join)
    held = (
        hf_deepspeed._hf_deepspeed_config_weak_ref() if hf_deepspeed._hf_deepspeed_config_weak_ref else None
    )
    with gathered(list(model.parameters())):
        hf_deepspeed.unset_hf_deepspeed_config()
        try:
            yield model
        finally:
            if held is not None:
                hf_deepspeed.set_hf_deepspeed_config(held)


def virtual_tokens_sharded(model) -> None:
    """Have a prompt-learning PEFT model (prompt or prefix tuning) save and load its virtual tokens where FSDP
    or ZeRO-3 holds them sharded.

    peft saves the tokens by running the prompt encoder outside any forward, where FSDP holds its weights as
    shards (torch refuses to mix them: "got mixed torch.Tensor and DTensor") and ZeRO-3 would gather them,
    which rank 0 saving alone waits for forever. The encoder's output is its embedding's rows in order, the
    tokens themselves, so they are taken whole instead: from the whole weights the save is given (DeepSpeed's
    consolidated state dict, gather_weights'), or, for an FSDP checkpoint that every rank saves, gathered from
    the shards (a collective), at their own dtype (FSDP's gather for a forward would be bf16 under bf16). A
    checkpoint's tokens, whole in every rank, load into each rank's shard. Nothing changes where they are
    whole, nor for other models."""
    if not getattr(model, "_is_prompt_learning", False):
        return
    from torch.distributed.tensor import DTensor

    save, save_pretrained = model.get_prompt_embedding_to_save, model.save_pretrained
    given: dict = {}

    def get_prompt_embedding_to_save(adapter_name: str):
        weight = model.prompt_encoder[adapter_name].embedding.weight
        sharded = isinstance(weight, DTensor)
        if not (sharded or any_partitioned([weight])):
            return save(adapter_name)
        state = given.get("state_dict")
        if state is None and not sharded:
            raise RuntimeError(
                "ZeRO-3: the virtual tokens are saved from the whole weights save_pretrained is given"
            )
        whole = (
            weight.full_tensor()
            if state is None
            else state[f"prompt_encoder.{adapter_name}.embedding.weight"]
        )
        return whole.detach().cpu()

    def save_pretrained_given(*args, **kwargs):
        given["state_dict"] = kwargs.get("state_dict")
        try:
            return save_pretrained(*args, **kwargs)
        finally:
            given.clear()

    model.get_prompt_embedding_to_save = get_prompt_embedding_to_save
    model.save_pretrained = save_pretrained_given
    for encoder in model.prompt_encoder.values():
        encoder._load_adapter_state_dict = _loads_into_shards(encoder, encoder._load_adapter_state_dict)


def _loads_into_shards(encoder, load):
    from torch.distributed.tensor import DTensor, distribute_tensor

    def load_adapter_state_dict(state_dict: dict) -> None:
        weight = encoder.embedding.weight
        if isinstance(weight, DTensor):  # each rank takes its own rows of the whole tensor: no communication
            whole = state_dict["prompt_embeddings"].to(weight.device, weight.dtype)
            shard = distribute_tensor(whole, weight.device_mesh, weight.placements, src_data_rank=None)
            state_dict = {**state_dict, "prompt_embeddings": shard}
        load(state_dict)

    return load_adapter_state_dict


@contextlib.contextmanager
def whole_layers(model, reshard_after_forward: bool):
    """FSDP's layers (every sharded module but the root) gathered for the block and kept so through their
    forwards, then sharded again as the preset shards them after a forward."""
    from torch.distributed.fsdp import FSDPModule

    layers = [m for m in model.modules() if isinstance(m, FSDPModule) and m is not model]
    for layer in layers:
        layer.set_reshard_after_forward(False, recurse=False)
        layer.unshard()
    try:
        yield
    finally:
        for layer in layers:
            layer.reshard()
            layer.set_reshard_after_forward(reshard_after_forward, recurse=False)


def partitioned_copy(model):
    """A copy of a ZeRO-3-partitioned model (a full-training method's frozen reference), built partitioned the
    same way (zero.Init, the same shapes over the same processes) with each rank copying its own partition:
    no rank holds it whole and nothing crosses processes. None for a model that is not partitioned."""
    if not is_partitioned(model):
        return None
    copy = type(model)._from_config(model.config, dtype=next(model.parameters()).dtype)
    for (name, mine), (_, theirs) in zip(model.named_parameters(), copy.named_parameters(), strict=True):
        if theirs.ds_tensor.shape != mine.ds_tensor.shape:
            raise RuntimeError(
                f"{name}: the copy's partition {theirs.ds_tensor.shape} is not {mine.ds_tensor.shape}"
            )
        theirs.ds_tensor.data.copy_(mine.ds_tensor.data)
    for (_, mine), (_, theirs) in zip(model.named_buffers(), copy.named_buffers(), strict=True):
        theirs.data.copy_(mine.data)  # buffers are not partitioned
    return copy

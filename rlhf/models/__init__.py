"""Model + tokenizer for (model config, hardware profile).

Every source ends as a plain Hugging Face directory that `from_pretrained` loads (models/sources.py), so
a saved adapter's `base_model_name_or_path` always points at something transformers and peft can load
again. `python -m rlhf.models [overrides]` prepares a run's base model ahead of it (models/__main__.py).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from rlhf import hardware, hub
from rlhf.errors import UserError
from rlhf.models.sources import config_of, local_dir


def load(cfg: DictConfig, hw: Any, cache_dir: str, head: str = "causal-lm", to_train: bool = False):
    """(model, tokenizer) ready to train on the profile's device.

    `head` is causal-lm, or sequence-classification for a reward model (one score per sequence).
    `to_train`: the model a run trains; inside a ZeRO-3 launch its weights are built partitioned across the
    processes (a model loaded to score or sample is built whole).
    """
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )

    path = local_dir(cfg, Path(cache_dir).expanduser())
    if not Path(path).exists():
        hub.check_model(cfg.path, cfg.revision)
    common = {"revision": cfg.revision, "trust_remote_code": cfg.trust_remote_code}
    try:
        config = AutoConfig.from_pretrained(path, **common)
        tokenizer = AutoTokenizer.from_pretrained(path, **common)
    except OSError as e:
        raise UserError(
            f"model.path={cfg.path}: cannot be loaded ({_first_line(e)}); fix: connect to the network once so "
            "the hub caches it (gated models also need `hf auth login`), or set model.path to a local directory"
        ) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    quant = hardware.quantization(hw, count_params(config) / 1e9)
    from rlhf.models.partitioned import load_partitioned

    # under ZeRO-3 the weights are built partitioned across the processes (and DeepSpeed places them)
    partitioned = to_train and quant is None and load_partitioned(config, hw.precision)
    auto = AutoModelForCausalLM if head == "causal-lm" else AutoModelForSequenceClassification
    extra = {} if head == "causal-lm" else {"num_labels": 1, "pad_token_id": tokenizer.pad_token_id}
    try:
        model = auto.from_pretrained(
            path,
            **common,
            **extra,
            dtype=hardware.dtype(hw.model_dtype),
            quantization_config=quant,
            device_map=None if partitioned else {"": hardware.device(hw)},
            use_safetensors=True,
            attn_implementation=cfg.attn_implementation,
        )
    except (ImportError, ValueError) as e:
        if "attention" not in str(e).lower() and "attn" not in str(e).lower():
            raise
        # a kernel whose package is missing or that this device cannot run (flash attention on a CPU)
        raise UserError(
            f"model.attn_implementation={cfg.attn_implementation}: cannot be used here ({_first_line(e)}); "
            "fix: model.attn_implementation=sdpa (every device), or install the kernel's package"
        ) from None
    if quant is not None and hw.device == "cpu":
        keep_4bit_trainable(model)
    if head == "causal-lm":
        contiguous_head_input(model)
    return model, tokenizer


def attention_kernels() -> list[str]:
    """The attention kernels transformers can load a model with (model.attn_implementation), from its registry."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    return ["eager", *(k for k in ALL_ATTENTION_FUNCTIONS.valid_keys() if "|" not in k)]


@contextlib.contextmanager
def attention_kernel(model, kernel: str):
    """Run `model` with another attention kernel inside the block ('' keeps its own), then restore it."""
    own = model.config._attn_implementation
    if kernel and kernel != own:
        model.set_attn_implementation(kernel)
    try:
        yield model
    finally:
        if kernel and kernel != own:
            model.set_attn_implementation(own)


def contiguous_head_input(model) -> None:
    """The LM head gets a contiguous input: generation's prefill scores only the last position
    (`logits_to_keep=1`, a strided slice of the hidden states), and torch's matmul of a strided 3D input by a
    weight that does not require grad (a frozen base: the eval stage, rollouts, synth) goes through a batched
    matmul over the weight expanded per row: batch x vocabulary x hidden elements (2.2 GB for 40 prompts on
    SmolLM2's 49k x 576 head, 3.6 GB at eval.batch_size=64), where the copy of the slice costs batch x hidden.
    """
    head = model.get_output_embeddings()
    if head is not None:
        head.register_forward_pre_hook(_contiguous_first_arg)


def _contiguous_first_arg(module, args):
    if args and hasattr(args[0], "is_contiguous") and not args[0].is_contiguous():
        return (args[0].contiguous(), *args[1:])
    return None


def upcast_trainable(model) -> int:
    """An adapter's trainable parameters in float32 on a 16-bit frozen base; the number upcast.

    peft keeps LoRA weights in float32 (autocast_adapter_dtype), but a head it trains whole (a reward model's
    score, modules_to_save) is copied at the base's dtype, where AdamW's small updates round away. Full
    fine-tuning (no frozen parameter) is left as the profile loaded it.
    """
    import torch

    params = list(model.parameters())
    if all(p.requires_grad for p in params):
        return 0
    low = [p for p in params if p.requires_grad and p.dtype in (torch.bfloat16, torch.float16)]
    for p in low:
        p.data = p.data.float()
    return len(low)


def adapter_inputs_follow_autocast(model) -> int:
    """Under autocast, adapter layers take their input as it comes; the number of layers this applies to.

    peft casts each LoRA layer's input to the adapter's dtype before its matmuls: float32 (upcast_trainable)
    on a bf16 base. Under autocast that copy is undone at once (the matmul runs in bf16) but it is kept for
    backward: with `target_modules: all-linear` a float32 copy of every adapted layer's input, 25 of the ~60
    KiB a token and a layer that LoRA with dropout saves on SmolLM2. A pre-hook on the model switches peft's
    own casting off (`cast_input_dtype_enabled`, the switch peft.helpers.disable_input_dtype_casting sets)
    for every forward that runs under autocast and back on for those that do not (sampling in float32 on a
    bf16 base needs it): the same bf16 matmuls, so losses and gradients are unchanged without dropout.
    """
    import torch
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    if not layers:
        return 0
    device = next(model.parameters()).device.type

    def follow_autocast(module, args):
        cast = not torch.is_autocast_enabled(device)
        for layer in layers:
            layer.cast_input_dtype_enabled = cast

    # on the base model: generate() skips peft's wrapper
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    inner.register_forward_pre_hook(follow_autocast)
    return len(layers)


def set_adapter_dropout(model, p: float) -> int:
    """LoRA's dropout back at `p` where a trainer turned it off; the number of adapter dropouts set.

    TRL's DPO, KTO and reward trainers turn every dropout of the model off when they are built
    (`disable_dropout=True`: the policy's and the reference's log-probs must come from the same network),
    LoRA's own among them, so a `method.lora_dropout` of theirs would not apply. The adapter is off in the
    reference pass, so its dropout does not touch the reference; the base model's dropouts stay off.
    """
    import torch
    from peft.tuners.lora import LoraLayer

    dropouts = [
        d for m in model.modules() if isinstance(m, LoraLayer)
        for d in m.lora_dropout.values() if isinstance(d, torch.nn.Dropout)
    ]  # fmt: skip
    for d in dropouts:
        d.p = p
    return len(dropouts)


def pack_padded_rows(model, frozen: bool = False) -> bool:
    """In training, the decoder runs on a batch's real tokens only; whether the model's decoder was found.

    TRL's preference trainers (dpo, rm, kto) pad each batch to its longest sequence: on the shipped pairs, 2
    pairs a micro-batch hold 1.40x as many positions as tokens (the longest batch 1016 for 752), and every
    padded position costs a layer's compute and its ~24 KiB of saved activations (bench/activations.py).
    TRL 1.16 turns its own `padding_free` off for DPO, so a pre-hook on the decoder (the model's
    `base_model_prefix` module) packs right-padded rows into one row whose position_ids restart at each
    sequence, which transformers reads as packed sequences (each attends only to itself: its masking
    utilities, with no attention mask and no cache), and a hook after it puts the hidden states back in the
    padded layout (zeros at the padding, which the labels mask) for the head, the reward head's pooling and
    the trainer's own code. Only forwards in training mode (any mode for a `frozen` reference model, whose
    passes must add up as the policy's do) with a right-padded 2D mask, no cache and no other position ids
    are packed; anything else (generation, eval, left padding) runs as it came.
    """
    import torch

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = getattr(inner, getattr(inner, "base_model_prefix", ""), None)
    if not isinstance(decoder, torch.nn.Module) or decoder is inner:
        return False
    kept: list = []  # the current forward's token mask, between the two hooks
    config = getattr(inner, "config", None)
    # sdpa saves the float mask it makes of a bool one for backward, a copy in each layer: given the float
    # mask, every layer keeps the one tensor (not where layers slide a window over the sequence)
    float_mask = getattr(config, "_attn_implementation", None) == "sdpa" and not _slides(config)

    def pack(module, args, kwargs):
        kept.clear()
        if len(args) == 1 and "input_ids" not in kwargs:  # a sequence classifier passes its ids positionally
            args, kwargs = (), {**kwargs, "input_ids": args[0]}
        ids, mask = kwargs.get("input_ids"), kwargs.get("attention_mask")
        if (
            not (module.training or frozen) or args or ids is None or not torch.is_tensor(mask) or mask.dim() != 2
            or ids.size(0) < 2 or kwargs.get("past_key_values") is not None
            or kwargs.get("position_ids") is not None or kwargs.get("inputs_embeds") is not None
            or kwargs.get("output_hidden_states") or kwargs.get("output_attentions")
        ):  # fmt: skip
            return None
        keep = mask.bool()
        lengths = keep.sum(1)
        right_padded = torch.arange(mask.size(1), device=mask.device) < lengths[:, None]
        if bool(keep.all()) or not torch.equal(keep, right_padded) or not bool((lengths > 0).all()):
            return None
        kept.append(keep)
        positions = (keep.cumsum(1) - 1)[keep]  # 0, 1, ... within each row
        within = _packed_float_mask(positions, _query_dtype(decoder, ids.device.type)) if float_mask else None
        packed = dict(kwargs, input_ids=ids[keep][None], attention_mask=within, position_ids=positions[None])
        return args, dict(packed, use_cache=False)

    def unpack(module, args, output):
        if not kept:
            return None
        keep = kept.pop()
        hidden = output[0]  # last_hidden_state, in a ModelOutput or a tuple
        full = hidden.new_zeros(*keep.shape, hidden.size(-1))
        full[keep] = hidden[0]
        if isinstance(output, tuple):
            return (full, *output[1:])
        output.last_hidden_state = full
        return output

    decoder.register_forward_pre_hook(pack, with_kwargs=True)
    decoder.register_forward_hook(unpack)
    return True


def _slides(config) -> bool:
    """Whether some layer of the model attends through a sliding window."""
    types = getattr(config, "layer_types", None) or ()
    window = getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True)
    return bool(window) or any(t != "full_attention" for t in types)


def _query_dtype(decoder, device: str):
    """The dtype attention's queries will have: autocast's where it is on, else the embeddings'."""
    import torch

    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return decoder.get_input_embeddings().weight.dtype


def _packed_float_mask(positions, dtype):
    """The (1, 1, T, T) additive mask of packed sequences (positions restart at 0 at each): 0 where a token
    sees a token of its own sequence at or before it, -inf elsewhere, as sdpa itself turns a bool mask into."""
    import torch

    sequence = (positions == 0).cumsum(0)
    sees = (sequence[:, None] == sequence[None, :]).tril()
    mask = torch.zeros(sees.shape, dtype=dtype, device=sees.device).masked_fill_(~sees, float("-inf"))
    return mask[None, None]


def count_params(config) -> int:
    """Parameter count from the config alone (the model is built on the meta device: no memory)."""
    return sum(p.numel() for p in meta_model(config).parameters())


def meta_model(config):
    """The model a config describes, built on the meta device: its modules and shapes, no memory."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def module_names(cfg: DictConfig, cache_dir: str) -> dict[str, str]:
    """Every module of the model by its dotted name, with its class name (what LoRA's target_modules match).

    No weights load: the config is read from the model's YAML, directory or hub cache, and the model built on
    the meta device.
    """
    if cfg.source == "pretrained" and not Path(local_dir(cfg, Path(cache_dir))).exists():
        hub.check_model(cfg.path, cfg.revision)
    try:
        config = config_of(cfg, Path(cache_dir).expanduser())
    except OSError as e:
        raise UserError(
            f"model.path={cfg.path}: cannot be loaded ({_first_line(e)}); fix: connect to the network once so "
            "the hub caches it (gated models also need `hf auth login`), or set model.path to a local directory"
        ) from None
    return {name: type(module).__name__ for name, module in meta_model(config).named_modules() if name}


def keep_4bit_trainable(model) -> None:
    """Stop bitsandbytes from repacking 4-bit weights for CPU inference.

    On a CPU with AVX512-BF16, a Linear4bit forward pass without gradients repacks its weight into an
    inference-only layout; every later forward pass then runs a kernel autograd cannot see through, and the
    LoRA adapters below it silently get zero gradients. Generating samples before training triggers exactly
    that, so the repacking is switched off for models we train.
    """
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


def save(model, tokenizer, out: Path, state_dict: dict | None = None) -> None:
    """Adapter (PEFT) or full weights, as safetensors, with the tokenizer: loads with transformers / peft.

    `state_dict`: the whole model's weights where the model itself holds only this process's shard (FSDP,
    rlhf.distributed.gather_weights); peft keeps the adapter's entries of it, transformers all of them.
    """
    model.save_pretrained(out, **({} if state_dict is None else {"state_dict": state_dict}))
    tokenizer.save_pretrained(out)


def load_trained(
    model_dir: Path, cfg: DictConfig, hw: Any, cache_dir: str, head: str = "causal-lm", base=None
):
    """A run's model/ as a user loads it: its PEFT adapter onto the base (`base`, or the one `cfg` names,
    loaded now), or its full weights."""
    if (model_dir / "adapter_config.json").is_file():
        from peft import PeftConfig, PeftModel

        base = base if base is not None else load(cfg, hw, cache_dir, head)[0]
        # its trainable count as trained; peft loads prompt- and prefix-tuning's virtual tokens frozen only
        virtual = PeftConfig.from_pretrained(model_dir).is_prompt_learning
        model = PeftModel.from_pretrained(base, model_dir, is_trainable=not virtual)
        if virtual:
            model.prompt_encoder.requires_grad_(True)
        return model
    from omegaconf import OmegaConf

    saved = OmegaConf.merge(cfg, {"source": "pretrained", "path": str(model_dir)})
    return load(saved, hw, cache_dir, head)[0]


def save_merged(model, tokenizer, out: Path) -> None:
    """The LoRA adapter folded into the base weights: a plain model that needs no peft to load.

    Merging changes the weights in place, so it runs after everything else has used the adapter model.
    """
    model.merge_and_unload().save_pretrained(out)
    tokenizer.save_pretrained(out)


def trainable_parameters(model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:160] if text else type(e).__name__

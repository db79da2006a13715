"""Generation with a model in memory: chat prompts encoded for `generate`, greedy samples, a LoRA adapter
folded into the weights while a model only runs forward."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


def encode_chat_prompts(tokenizer, prompts: list[list[dict]], device) -> dict:
    """Chat prompts rendered with the generation prompt, left-padded into one batch for `generate`."""
    texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        return tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
    finally:
        tokenizer.padding_side = side


def greedy(model, tokenizer, prompts: list[list[dict]], max_new_tokens: int) -> list[str]:
    """Greedy completions for chat prompts, in one left-padded batch."""
    import torch

    batch = encode_chat_prompts(tokenizer, prompts, model.device)
    was_training = model.training
    model.eval()
    with torch.no_grad(), lora_merged(model):  # the same function, fewer matmuls per step
        out = model.generate(
            **batch,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    model.train(was_training)
    return tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)


@contextlib.contextmanager
def lora_merged(model: Any) -> Iterator[None]:
    """A LoRA adapter folded into the weights while the model runs forward, and taken out again afterwards.

    The same function without the adapter's extra matmuls per layer (the tuned model's eval took 1.2x the
    base model's time unmerged). Not on quantized weights, where merging would round; not for prompt tuning.
    A 16-bit base (bf16 on a CPU, every GPU profile) cannot take the adapter out again exactly (W + BA - BA
    rounds), so its merged layers' weights are kept aside in host memory (not on the GPU, where a copy of a
    7B model's layers would not fit beside it) and put back as they were.
    """
    import torch
    from peft import LoraConfig, PeftModel
    from peft.tuners.lora import LoraLayer

    mergeable = (
        isinstance(model, PeftModel)
        and all(isinstance(c, LoraConfig) for c in model.peft_config.values())
        and all(p.is_floating_point() for p in model.parameters())
    )
    kept: list[tuple[torch.Tensor, torch.Tensor]] = []
    if mergeable:
        for layer in model.modules():
            weight = getattr(getattr(layer, "base_layer", None), "weight", None)
            if isinstance(layer, LoraLayer) and weight is not None and weight.element_size() < 4:
                kept.append((weight.data, weight.data.to("cpu", copy=True)))
        model.merge_adapter()
    try:
        yield
    finally:
        if mergeable:
            model.unmerge_adapter()
            for live, original in kept:
                live.copy_(original)

"""method=prompt-tuning on the tiny model: only the virtual-token embeddings train."""

from __future__ import annotations

import torch

from rlhf import data, models
from rlhf.methods import prompt_tuning
from tests.conftest import make_inputs


def test_only_the_virtual_tokens_train(make_cfg, tiny, tmp_path):
    cfg = make_cfg(
        "model=tiny",
        "hardware=cpu",
        "method=prompt-tuning",
        "method.max_steps=3",
        "method.num_virtual_tokens=5",
    )
    model, tokenizer = tiny()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    rows = data.load(cfg.data, prompt_tuning.DATA_FORMATS, "prompt-tuning").rows[:12]
    result = prompt_tuning.train(make_inputs(cfg, model, tokenizer, rows, tmp_path))

    trainable = {n: p for n, p in result.model.named_parameters() if p.requires_grad}
    assert list(trainable) == ["prompt_encoder.default.embedding.weight"]
    assert trainable["prompt_encoder.default.embedding.weight"].shape == (5, model.config.hidden_size)
    assert models.trainable_parameters(result.model)[0] == 5 * model.config.hidden_size
    base = result.model.get_base_model()
    assert all(torch.equal(before[n], p) for n, p in base.named_parameters())


def test_virtual_tokens_start_from_the_init_text_and_move(make_cfg, tiny, tmp_path):
    cfg = make_cfg(
        "model=tiny",
        "hardware=cpu",
        "method=prompt-tuning",
        "method.max_steps=3",
        "method.num_virtual_tokens=4",
    )
    model, tokenizer = tiny()
    init_ids = tokenizer(cfg.method.prompt_tuning_init_text, add_special_tokens=False)["input_ids"][:4]
    init = model.get_input_embeddings().weight[init_ids].detach().float()  # the prompt trains in float32
    rows = data.load(cfg.data, prompt_tuning.DATA_FORMATS, "prompt-tuning").rows[:12]
    result = prompt_tuning.train(make_inputs(cfg, model, tokenizer, rows, tmp_path))
    learned = result.model.prompt_encoder.default.embedding.weight.detach()
    assert learned.shape == init.shape and not torch.equal(learned, init)
    assert torch.allclose(learned, init, atol=1.0)  # trained from the text's embeddings, not from noise

"""method=sft on the tiny model: the loss falls, every weight moves, the same seed gives the same curve."""

from __future__ import annotations

import torch

from rlhf import data
from rlhf.methods import sft
from tests.conftest import make_inputs


def train(make_cfg, tiny, tmp_path, *overrides, steps=8, lr=3e-3):
    cfg = make_cfg(
        "model=tiny",
        "hardware=cpu",
        "method=sft",
        f"method.max_steps={steps}",
        f"method.learning_rate={lr}",
        *overrides,
    )
    model, tokenizer = tiny()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    rows = data.load(cfg.data, sft.DATA_FORMATS, "sft").rows[:32]
    result = sft.train(make_inputs(cfg, model, tokenizer, rows, tmp_path))
    return result, before


def test_loss_covers_the_response_only(make_cfg, tiny, tmp_path):
    cfg = make_cfg("model=tiny", "hardware=cpu", "method=sft", "method.max_steps=1")
    model, tokenizer = tiny()
    rows = data.load(cfg.data, sft.DATA_FORMATS, "sft").rows[:4]
    trainer = sft.build_trainer(make_inputs(cfg, model, tokenizer, rows, tmp_path))
    for row, example in zip(rows, trainer.train_dataset, strict=True):
        trained = [t for t in example["labels"] if t != -100]  # -100: ignored by the loss
        assert tokenizer.decode(trained) == row["completion"][0]["content"] + "<|im_end|>\n"
        assert len(trained) < len(
            example["input_ids"]
        )  # the prompt's tokens are in the input, not in the loss


def test_loss_falls_and_every_weight_moves(make_cfg, tiny, tmp_path):
    result, before = train(make_cfg, tiny, tmp_path)
    after = dict(result.model.named_parameters())
    assert all(not torch.equal(before[n], after[n]) for n in before), (
        "full fine-tuning must update every tensor"
    )
    assert result.metrics["train_loss"] < 7.6  # log(2048) = 7.62: the untrained model's loss


def test_loss_curve_falls_over_a_few_steps(make_cfg, tiny, tmp_path):
    from rlhf.metrics import MetricsFile

    cfg = make_cfg(
        "model=tiny",
        "hardware=cpu",
        "method=sft",
        "hardware.sft_batch_size=4",
        "method.max_steps=10",
        "method.learning_rate=3e-3",
        "method.warmup_ratio=0",
    )
    model, tokenizer = tiny()
    rows = data.load(cfg.data, sft.DATA_FORMATS, "sft").rows[:16]
    log = MetricsFile(tmp_path / "metrics.jsonl")
    sft.train(make_inputs(cfg, model, tokenizer, rows, tmp_path, log))
    losses = [r["loss"] for r in log.rows if "loss" in r]
    assert len(losses) == 10
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.5


def test_same_seed_same_loss_curve(make_cfg, tiny, tmp_path):
    from rlhf.metrics import MetricsFile

    curves = []
    for i in range(2):
        cfg = make_cfg("model=tiny", "hardware=cpu", "method=lora", "method.max_steps=4")
        model, tokenizer = tiny()
        rows = data.load(cfg.data, sft.DATA_FORMATS, "lora").rows[:16]
        log = MetricsFile(tmp_path / f"m{i}.jsonl")
        from transformers import set_seed

        from rlhf.methods import lora

        set_seed(cfg.seed)
        lora.train(make_inputs(cfg, model, tokenizer, rows, tmp_path / str(i), log))
        curves.append([r["loss"] for r in log.rows if "loss" in r])
    assert curves[0] == curves[1]

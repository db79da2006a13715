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


def test_heldout_loss_on_a_schedule_and_at_the_end(make_cfg, tiny, tmp_path):
    """eval_loss every method.eval_steps steps and once more at the last step, the last one in the result."""
    from rlhf.metrics import MetricsFile

    cfg = make_cfg("model=tiny", "hardware=cpu", "method=sft", "method.max_steps=5", "method.eval_steps=2")
    model, tokenizer = tiny()
    loaded = data.load(cfg.data, sft.DATA_FORMATS, "sft")
    train_rows, heldout = data.split_off(loaded, 0.25, cfg.seed)
    log = MetricsFile(tmp_path / "metrics.jsonl")
    inputs = make_inputs(cfg, model, tokenizer, train_rows.rows, tmp_path, log, eval_rows=heldout.rows)
    result = sft.train(inputs)
    evals = [(r["step"], r["eval_loss"]) for r in log.rows if "eval_loss" in r]
    assert [step for step, _ in evals] == [2, 4, 5]
    assert result.extra["eval_loss"] == evals[-1][1]
    # the held-out loss is the model's loss on those rows: the untrained tiny model's is about log(2048)
    assert 7.0 < evals[0][1] < 8.0


def packed_and_plain(make_cfg, tiny, tmp_path, rows):
    cfg = make_cfg(
        "model=tiny", "hardware=cpu", "method=sft", "method.max_steps=1", "hardware.sft_batch_size=4"
    )
    model, tokenizer = tiny("method=sft")
    plain = sft.build_trainer(make_inputs(cfg, model, tokenizer, rows, tmp_path / "plain"))
    packed = sft.build_trainer(make_inputs(cfg, model, tokenizer, rows, tmp_path / "packed", packing=True))
    return model, plain, packed


def test_packing_keeps_each_row_its_own_attention_and_completion_only_loss(make_cfg, tiny, tmp_path):
    """A packed batch is one row of several examples: each example's logits equal those it gets alone
    (attention does not cross into its neighbours) and its labels are its completion's tokens only."""
    cfg = make_cfg("model=tiny", "hardware=cpu", "method=sft")
    rows = data.load(cfg.data, sft.DATA_FORMATS, "sft").rows[:8]
    model, plain, packed = packed_and_plain(make_cfg, tiny, tmp_path, rows)
    alone = {tuple(ex["input_ids"]): ex for ex in plain.train_dataset}
    batch = next(iter(packed.get_train_dataloader()))
    assert batch["input_ids"].shape[0] == 1 and "attention_mask" not in batch  # padding-free: one sequence
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits[0]
    starts = (batch["position_ids"][0] == 0).nonzero().flatten().tolist() + [batch["input_ids"].shape[1]]
    segments = [(a, b) for a, b in zip(starts, starts[1:], strict=False) if b > a]
    assert len(segments) >= 2, "the first window should hold several rows"
    checked = 0
    for a, b in segments:
        ids = tuple(batch["input_ids"][0, a:b].tolist())
        if ids not in alone:  # the collator's padding at the end
            continue
        ex = alone[ids]
        with torch.no_grad():
            own = model(input_ids=torch.tensor([ex["input_ids"]])).logits[0]
        torch.testing.assert_close(logits[a:b], own, atol=1e-4, rtol=1e-4)
        expected = torch.tensor(ex["labels"])  # the row alone: its completion's tokens, -100 elsewhere
        expected[0] = -100  # a row's first token has nothing before it to be predicted from
        assert torch.equal(batch["labels"][0, a:b], expected)
        assert (expected != -100).sum() < len(ids)  # the prompt is in the input, not in the loss
        checked += 1
    assert checked >= 2


def test_packing_trains_with_fewer_steps_per_epoch(make_cfg, tiny, tmp_path):
    cfg = make_cfg("model=tiny", "hardware=cpu", "method=sft")
    rows = data.load(cfg.data, sft.DATA_FORMATS, "sft").rows[:24]
    _, plain, packed = packed_and_plain(make_cfg, tiny, tmp_path, rows)
    assert len(packed.get_train_dataloader()) < len(plain.get_train_dataloader())
    packed.args.max_steps = 3
    output = packed.train()
    assert 0 < output.metrics["train_loss"] < 8

"""method=kto on the tiny model: unpaired rows, LoRA with the adapter-disabled base as reference, full with a
frozen copy; the batch rule of the loss kto."""

from __future__ import annotations

import pytest
import torch
import trl
from omegaconf import OmegaConf

from rlhf import choices, models
from rlhf.errors import ConfigError
from rlhf.methods import kto
from rlhf.validate import check_resolved_profile, validate
from tests.conftest import make_inputs


def unpaired(n: int) -> list[dict]:
    """n desirable rows, then n undesirable ones (a file a user sorted by label): 'yes please' is good."""
    return [
        {
            "prompt": [{"role": "user", "content": f"Question {i}?"}],
            "completion": [{"role": "assistant", "content": ("yes please " if good else "no way ") * 3}],
            "label": good,
        }
        for good in (True, False)
        for i in range(n)
    ]


@pytest.fixture
def given(monkeypatch):
    """What each KTOTrainer is given: its data set's labels, in order, and its reference model."""
    seen: list[dict] = []

    class Spy(trl.KTOTrainer):
        def __init__(self, *args, train_dataset=None, ref_model=None, **kwargs):
            seen.append({"labels": list(train_dataset["label"]), "ref_model": ref_model})
            super().__init__(*args, train_dataset=train_dataset, ref_model=ref_model, **kwargs)

    monkeypatch.setattr(trl, "KTOTrainer", Spy)
    return seen


def test_lora_kto_raises_the_margin_on_interleaved_rows(make_cfg, tiny, tmp_path, given):
    cfg = make_cfg(
        "model=tiny", "hardware=cpu", "method=kto", "method.max_steps=3", "method.learning_rate=1e-2"
    )
    model, tokenizer = tiny()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    inputs = make_inputs(cfg, model, tokenizer, unpaired(6), tmp_path)
    result = kto.train(inputs)

    # the trainer gets bool labels, alternating: every batch (2 rows on cpu) holds both kinds
    assert [g["labels"] for g in given] == [[True, False] * 6]
    assert given[0]["ref_model"] is None  # the reference is the adapter disabled
    steps = [r for r in inputs.metrics.rows if "loss" in r]
    assert len(steps) == 3 and all("rewards/margins" in r and "kl" in r for r in steps)
    assert result.extra["reward_margin"] == steps[-1]["rewards/margins"] > steps[0]["rewards/margins"]
    assert result.extra["final_kl"] == steps[-1]["kl"] >= 0

    params = dict(result.model.named_parameters())
    moved = {n: bool(p.abs().sum() > 0) for n, p in params.items() if "lora_B" in n}
    assert moved and all(moved.values())
    with result.model.disable_adapter():  # the reference: the untouched base
        for name, p in result.model.get_base_model().named_parameters():
            key = name.replace(".base_layer", "")
            if key in before:
                assert torch.equal(before[key], p)


def test_full_kto_trains_every_weight_against_a_frozen_copy(make_cfg, tiny, tmp_path, given):
    cfg = make_cfg(
        "model=tiny", "hardware=cpu", "method=kto", "method.adapter=none", "method.max_steps=1",
        "method.warmup_ratio=0", "method.learning_rate=1e-3",
    )  # fmt: skip
    model, tokenizer = tiny("method=kto", "method.adapter=none")  # float32: every weight trains
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = kto.train(make_inputs(cfg, model, tokenizer, unpaired(4), tmp_path))
    trainable, total = models.trainable_parameters(result.model)
    assert trainable == total and result.extra["reward_margin"] is not None
    assert any(not torch.equal(before[n], p) for n, p in result.model.named_parameters())
    ref = dict(given[0]["ref_model"].named_parameters())  # a copy, frozen at the weights before training
    assert ref.keys() == before.keys() and not any(p.requires_grad for p in ref.values())
    assert all(torch.equal(before[n], p) for n, p in ref.items())


def test_loss_kto_needs_a_batch_above_one(make_cfg, tiny, tmp_path):
    cfg = make_cfg("model=tiny", "method=kto", "hardware=cpu", "hardware.pref_batch_size=1")
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    assert e.value.problems == [
        "hardware.pref_batch_size=1: method=kto's loss kto needs a per-device batch > 1 (its KL term "
        "compares rows of one batch); fix: hardware.pref_batch_size=2 (halve hardware.pref_grad_accum to keep the "
        "effective batch), or method.loss_type=apo_zero_unpaired"
    ]
    # the run checks the profile hardware=auto picked again (an rtx4060-8gb one has a batch of 1)
    picked = OmegaConf.to_object(make_cfg("hardware=rtx4060-8gb").hardware)
    with pytest.raises(ConfigError) as at_run:
        check_resolved_profile(make_cfg("model=tiny", "method=kto"), picked)
    assert at_run.value.problems == e.value.problems
    validate(make_cfg("method=kto", "hardware.pref_batch_size=1", "method.loss_type=apo_zero_unpaired"))
    validate(make_cfg("method=dpo", "hardware.pref_batch_size=1"))  # the rule is kto's only


def test_kto_loss_types_are_trls(make_cfg):
    cfg = make_cfg("model=tiny", "method=kto", "method.loss_type=sigmoid")
    assert kto.library_choices(cfg.method) == {"loss_type": ["kto", "apo_zero_unpaired"]}
    with pytest.raises(
        ConfigError, match=r"^method.loss_type=sigmoid: unknown value; fix: choose one of: kto,"
    ):
        choices.check(cfg)

"""The monitor group: conditions on logged signals, alarms that warn, checkpoint or stop, and real runs that a
length-paying reward or a far too high learning rate sets off."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from rlhf import checkpoint, rewards
from rlhf.monitor import Monitor, holds, rules_of
from tests.conftest import Rows

NAN = math.nan

# (condition, value, window, history, holds)
CONDITIONS = [
    ("above", 4, 3, [1, 1, 1, 5, 5, 5], True),
    ("above", 4, 3, [1, 1, 1, 1, 5, 5], False),  # the window's mean, 3.7: one step is not a trend
    ("below", 0, 3, [1, 0.5, -1, -1, -1], True),
    ("rise", 100, 5, [1] * 5 + [3, 3], True),  # +200% over the early level
    ("rise", 100, 5, [1] * 5 + [1.5, 1.5], False),  # +50%
    ("rise", 100, 5, [1] * 5 + [9], False),  # half a window after the early one is needed first
    ("fall", 60, 5, [2] * 5 + [0.5] * 3, True),  # entropy down 75%
    ("fall", 30, 5, [-100] * 5 + [-140] * 3, True),  # a log-probability 40% further below 0
    ("fall", 30, 5, [-100] * 5 + [-80] * 3, False),  # ... rising is no fall
    ("spike", 10, 10, [1] * 10 + [20], True),
    ("spike", 10, 10, [1] * 10 + [5], False),
    ("spike", 10, 10, [1] * 5 + [20], False),  # not yet a window to compare with
    ("nonfinite", 0, 1, [1, NAN], True),
    ("nonfinite", 0, 1, [1, math.inf], True),
    ("nonfinite", 0, 1, [NAN, 1], False),
    ("trend_up", 0.5, 5, [9, 0, 1, 2, 3, 4], True),  # slope 1 per step over the last 5
    ("trend_down", 0.5, 5, [0, 1, 2, 3, 4], False),
]


@pytest.mark.parametrize("condition,value,window,history,expected", CONDITIONS)
def test_conditions(condition, value, window, history, expected):
    assert holds(condition, value, window, [float(v) for v in history]) is expected


def rule(signal, condition, value=0.0, window=2, action="warn", optional=False):
    return SimpleNamespace(
        signal=signal,
        condition=condition,
        value=value,
        window=window,
        action=action,
        why="",
        optional=optional,
    )


def plan(tmp_path):
    return checkpoint.Plan(run_dir=tmp_path, every=0, keep=1, at_end=False)


def test_an_alarm_fires_once_is_logged_and_asks_for_its_action(tmp_path, capsys):
    rules = {
        "long": rule("response_length", "above", 10, action="stop"),
        "save": rule("kl", "above", 1, action="checkpoint"),
        "critic": rule("explained_variance", "below", 0, optional=True),  # a signal grpo does not log
    }
    sink, p = Rows(), plan(tmp_path)
    watch = Monitor(sink, rules, {"response_length": "completions/mean_length", "kl": "kl"}, p)
    for step, (length, kl) in enumerate([(4, 0.1), (12, 0.5), (30, 3.0), (30, 3.0)], start=1):
        watch.write(step, 0.0, {"completions/mean_length": length, "kl": kl})
    assert [(a.rule, a.step) for a in watch.alarms] == [("long", 3), ("save", 3)]  # once each
    assert [r for r in sink.rows if any(k.startswith("alarm/") for k in r)] == [
        {"step": 3, "epoch": 0.0, "alarm/long": 30},
        {"step": 3, "epoch": 0.0, "alarm/save": 3.0},
    ]
    assert p.wanted and p.halt.startswith("long")
    assert watch.stopped_early() == {"step": 3, "rule": "long", "reason": ""}
    assert "monitor: long fired at step 3: response_length 30 (above 10) -> stop" in capsys.readouterr().err
    assert "critic" not in watch.rules  # optional: applies only where the method logs the signal


def test_a_resumed_run_replays_its_rows_without_acting_again(tmp_path):
    rules = {"long": rule("response_length", "rise", 50, window=2, action="stop")}
    first = Monitor(Rows(), rules, {"response_length": "len"}, plan(tmp_path))
    for step, length in enumerate([4, 4, 8, 8], start=1):
        first.write(step, 0.0, {"len": length})
    again = Monitor(Rows(), rules, {"response_length": "len"}, plan(tmp_path), replay=first.rows)
    assert [(a.rule, a.step) for a in again.alarms] == [("long", 3)]
    assert again.plan.halt is None  # that stop was taken by the first attempt
    assert again.history["long"] == [4, 4, 8, 8]  # the early level carries over


def eos_biased(load):
    """models.load, with the tiny model's end-of-sequence logit raised: its answers start a token or two long
    (the random tiny model otherwise never stops), so a reward that pays for length can lengthen them."""

    def biased(*args, **kwargs):
        model, tokenizer = load(*args, **kwargs)
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": "I feel so"}], return_tensors="pt"
        )
        ids = prompt["input_ids"] if hasattr(prompt, "keys") else prompt
        with torch.no_grad():
            hidden = model(input_ids=ids, output_hidden_states=True).hidden_states[-1][0].mean(0)
            model.lm_head.weight[tokenizer.eos_token_id] = 1.7 * hidden / hidden.norm()
        return model, tokenizer

    return biased


def length_reward(cfg):
    def length(prompts, completions, **kwargs):
        return [float(len(rewards.text_of(c))) for c in completions]

    return [rewards.Reward("length", length, 1.0)]


def test_a_length_paying_reward_fires_the_length_rule_and_stops_the_run_cleanly(
    rlhf_cli, tmp_path, monkeypatch
):
    from peft import AutoPeftModelForCausalLM

    from rlhf import models

    monkeypatch.setattr(models, "load", eos_biased(models.load))
    monkeypatch.setattr(rewards, "build", length_reward)
    run_dir = tmp_path / "run"
    out = rlhf_cli(
        "model=tiny", "hardware=cpu", "method=grpo", "method.max_steps=30", "method.learning_rate=1e-2",
        "method.num_generations=4", "method.max_new_tokens=24", "eval=none", "logger=none",
        "checkpoint.every=0", f"hydra.run.dir={run_dir}",
        # the adapter's dropout is this toy's noise: with it the answers double within ~10 steps; without it
        # (grpo's default) they had not within 30
        "method.lora_dropout=0.05",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    stop = summary["stopped_early"]
    assert stop["rule"] == "length_hacking" and "gamed by length" in stop["reason"]
    assert summary["steps"] == stop["step"] < 30  # ended at the step the rule fired
    assert "length_hacking" in [a["rule"] for a in summary["alarms"]]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    lengths = [r["completions/mean_length"] for r in rows if "completions/mean_length" in r]
    assert sum(lengths[-2:]) / 2 > 2 * sum(lengths[:5]) / 5  # the answers did grow: the rule was right
    assert any("alarm/length_hacking" in r for r in rows)
    assert (run_dir / "checkpoints" / f"step-{stop['step']}").is_dir()  # saved at that step boundary
    assert "monitor: length_hacking fired" in out.stderr and "stopped early" in out.stdout
    AutoPeftModelForCausalLM.from_pretrained(run_dir / "model")  # a model that loads, as at a normal end


def test_a_learning_rate_far_too_high_fires_the_entropy_rule(make_cfg, tiny, tmp_path):
    """GRPO with rewards that differ in every group (random, seeded) and a learning rate of 1: the policy
    leaves its early state within a few steps, and its entropy shows it. (The plain tiny model's logits are
    too small to move from uniform, whatever the adapter does: it starts from the end-of-sequence bias.)"""
    import random

    from rlhf import data
    from rlhf.methods import grpo
    from tests.conftest import make_inputs

    cfg = make_cfg(
        "model=tiny", "hardware=cpu", "method=grpo", "method.max_steps=12", "method.learning_rate=1.0",
        "method.num_generations=4", "method.max_new_tokens=8",
        "monitor.rules.entropy_blowup.window=2",  # it blows up within the default window of 5 steps
        "monitor.rules.entropy_collapse.window=2",
    )  # fmt: skip
    model, tokenizer = eos_biased(tiny)()
    rng = random.Random(0)

    def noise(prompts, completions, **kwargs):
        return [rng.random() for _ in completions]

    p = plan(tmp_path)
    watch = Monitor(Rows(), rules_of(cfg.monitor), grpo.SIGNALS, p)
    rows = data.load(cfg.data, grpo.DATA_FORMATS, "grpo").rows
    inputs = make_inputs(
        cfg,
        model,
        tokenizer,
        rows,
        tmp_path,
        watch,
        rewards=[rewards.Reward("noise", noise, 1.0)],
        checkpoints=p,
    )
    grpo.train(inputs)
    fired = {a.rule for a in watch.alarms}
    assert fired & {"entropy_collapse", "entropy_blowup", "kl_runaway"}, [a.line() for a in watch.alarms]


def test_stop_ends_ppo_at_a_step_boundary_with_a_checkpoint(make_cfg, tiny, tmp_path):
    """Our PPO loop: a stop rule that fires at step 3 ends training after step 3, saved there."""
    from rlhf.methods import ppo
    from tests.conftest import make_inputs

    cfg = make_cfg("model=tiny", "hardware=cpu", "method=ppo", "method.max_steps=8", "method.batch_size=2",
                   "method.mini_batch_size=2", "method.max_new_tokens=4")  # fmt: skip
    model, tokenizer = tiny()
    p = plan(tmp_path)
    watch = Monitor(Rows(), {"third": rule("response_length", "above", -1, window=3, action="stop")},
                    ppo.SIGNALS, p)  # fmt: skip
    prompts = [{"prompt": [{"role": "user", "content": f"I feel {w}"}]} for w in ("so", "very")]
    inputs = make_inputs(cfg, model, tokenizer, prompts, tmp_path, watch,
                         rewards=rewards.build(cfg.reward), checkpoints=p)  # fmt: skip
    ppo.train(inputs)
    assert max(r["step"] for r in watch.rows) == 3
    assert p.saves.steps == [3] and (Path(tmp_path) / "checkpoints" / "step-3").is_dir()

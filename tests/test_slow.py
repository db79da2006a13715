"""Slow tier (`make test-slow`): the embedded SmolLM2-135M end to end, and the presets built on it."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow


def test_embedded_model_runs_end_to_end_and_reloads(run_rlhf, tmp_path):
    from peft import AutoPeftModelForCausalLM

    out = run_rlhf("method.max_steps=2", f"hydra.run.dir={tmp_path}/run")
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["model"] == "smollm2-135m" and summary["total_params"] > 100_000_000
    model = AutoPeftModelForCausalLM.from_pretrained(tmp_path / "run" / "model")
    assert model.peft_config["default"].r == 16


def test_question_decomposition_preset_runs(run_rlhf, tmp_path):
    out = run_rlhf("experiment=question-decomposition", "method.max_steps=2", f"hydra.run.dir={tmp_path}/qd")
    assert out.returncode == 0, out.stderr[-3000:]
    samples = [json.loads(line) for line in (tmp_path / "qd" / "samples.jsonl").read_text().splitlines()]
    assert samples[0]["prompt"].endswith(
        "Which country has more people per square kilometre, Japan or Germany?"
    )
    assert json.loads((tmp_path / "qd" / "summary.json").read_text())["data"] == "question-decomposition"


def test_ppo_positive_raises_the_keyword_success_rate(run_rlhf, tmp_path):
    out = run_rlhf("experiment=ppo-positive", "method.max_steps=24", f"hydra.run.dir={tmp_path}/ppo")
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "ppo" / "metrics.jsonl").read_text().splitlines()]
    success = [r["success_rate"] for r in rows if "success_rate" in r]  # the monitor's alarm rows have none
    assert sum(success[-5:]) / 5 > sum(success[:5]) / 5 + 0.3, success

"""The eval stage: lm-eval before and after training in the same run, the base cache, re-evaluation, and
the stock lm_eval CLI on a run's saved model."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from rlhf import evaluate, generation, hardware
from tests.conftest import ROOT

QUICK_TASKS = [
    "rlhf_general_mc",
    "rlhf_instruction_following",
    "rlhf_keyword_completion",
    "rlhf_question_decomposition",
]


@pytest.fixture(scope="module")
def eval_run(rlhf_cli, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("eval") / "lora"
    out = rlhf_cli(
        "model=tiny", "method=lora", "method.max_steps=2", "eval=quick", "eval.limit=3",  # hardware=auto
        "export.merge=true", f"hydra.run.dir={run_dir}",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return run_dir, out


def test_eval_json_has_before_after_and_delta_for_every_quick_task(eval_run):
    run_dir, out = eval_run
    result = json.loads((run_dir / "eval.json").read_text())
    assert result["tasks"] == QUICK_TASKS and result["limit"] == 3
    # the multiple-choice task is scored on all its 139 items (eval.every_item): n from acc's stderr
    assert result["every_item"] == ["rlhf_general_mc"]
    for side in ("before", "after"):
        p, se = result[side]["rlhf_general_mc/acc"], result["stderr"][side]["rlhf_general_mc/acc"]
        assert 0 < p < 1 and p * (1 - p) / se**2 + 1 == pytest.approx(139, abs=0.5)
    for task in QUICK_TASKS:
        keys = [k for k in result["after"] if k.startswith(f"{task}/")]
        assert keys, f"no metric for {task}"
        for key in keys:  # rates lie in [0, 1]; the number of sub-questions is a count
            bound = float("inf") if key.endswith("/sub_questions") else 1.0
            assert 0 <= result["before"][key] <= bound and 0 <= result["after"][key] <= bound
            assert result["delta"][key] == pytest.approx(
                result["after"][key] - result["before"][key], abs=1e-6
            )
    # the same numbers in eval.md, in summary.json and in the terminal table
    table = (run_dir / "eval.md").read_text()
    assert all(f"| {task} |" in table for task in QUICK_TASKS)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["eval"] == result["after"] and summary["eval_delta"] == result["delta"]
    assert "rlhf_general_mc/acc" in out.stdout and "before" in out.stdout


def test_base_scores_are_computed_once_per_base_model(tiny, make_cfg, cache_dir, monkeypatch):
    cfg = make_cfg("model=tiny", "hardware=cpu", "eval.limit=2", "eval.tasks=[rlhf_general_mc]", "seed=7")
    model, tokenizer = tiny()
    first, _, cached_first = evaluate.base_results(
        cfg.eval, cfg.model, hardware.resolve(cfg.hardware), cfg.cache_dir, model, tokenizer
    )
    monkeypatch.setattr(evaluate, "score", lambda *a, **k: pytest.fail("the cached base was scored again"))
    again, seconds, cached_again = evaluate.base_results(
        cfg.eval, cfg.model, hardware.resolve(cfg.hardware), cfg.cache_dir, model, tokenizer
    )
    assert (cached_first, cached_again, seconds) == (False, True, 0.0) and again == first
    # another limit is another measurement: no cache hit
    other = make_cfg("model=tiny", "hardware=cpu", "eval.limit=3", "eval.tasks=[rlhf_general_mc]")
    key = evaluate.base_cache_key
    assert key(cfg.eval, cfg.model, hardware.resolve(cfg.hardware), "d") != key(
        other.eval, other.model, hardware.resolve(other.hardware), "d"
    )


def test_base_sample_generations_are_generated_once_per_base_model(tiny, make_cfg, monkeypatch):
    cfg = make_cfg("model=tiny", "hardware=cpu", "samples.max_new_tokens=4")
    model, tokenizer = tiny()
    prompts = [[{"role": "user", "content": "Name a colour."}], [{"role": "user", "content": "Say hi."}]]
    first = evaluate.base_samples(
        cfg.samples, cfg.model, hardware.resolve(cfg.hardware), cfg.cache_dir, model, tokenizer, prompts
    )
    assert first == generation.greedy(model, tokenizer, prompts, cfg.samples.max_new_tokens)
    monkeypatch.setattr(generation, "greedy", lambda *a, **k: pytest.fail("the cached base generated again"))
    again = evaluate.base_samples(
        cfg.samples, cfg.model, hardware.resolve(cfg.hardware), cfg.cache_dir, model, tokenizer, prompts
    )
    assert again == first
    with pytest.raises(pytest.fail.Exception):  # other prompts are other generations
        evaluate.base_samples(
            cfg.samples,
            cfg.model,
            hardware.resolve(cfg.hardware),
            cfg.cache_dir,
            model,
            tokenizer,
            prompts[:1],
        )


def test_the_tuned_model_is_scored_in_memory_with_its_adapter(tiny, make_cfg, tmp_path, monkeypatch):
    from lm_eval.models import huggingface
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    cfg = make_cfg("model=tiny", "hardware=cpu", "eval.limit=2", "eval.tasks=[rlhf_general_mc]")
    model, tokenizer = tiny()
    tuned = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"]))
    tuned.train()
    seen = []
    original = huggingface.HFLM.__init__

    def spy(self, pretrained, **kwargs):
        seen.append(pretrained)
        original(self, pretrained=pretrained, **kwargs)

    monkeypatch.setattr(huggingface.HFLM, "__init__", spy)
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", lambda *a, **k: pytest.fail("reloaded"))
    base = ({"scores": {"rlhf_general_mc/acc": 0.5}, "stderr": {}}, 1.0, False)
    result = evaluate.after_training(
        cfg.eval, base, tuned, tokenizer, hardware.resolve(cfg.hardware), tmp_path, "t"
    )
    assert seen == [tuned], "lm-eval must score the adapter model object itself"
    assert tuned.training, "lm-eval switches to eval mode; the stage switches back"
    # deltas are written rounded to 6 decimals
    assert result["delta"]["rlhf_general_mc/acc"] == pytest.approx(
        result["after"]["rlhf_general_mc/acc"] - 0.5, abs=1e-6
    )


@pytest.mark.slow
def test_stock_lm_eval_cli_scores_the_saved_adapter_like_the_run_did(eval_run, tmp_path):
    run_dir, _ = eval_run
    adapter = json.loads((run_dir / "model" / "adapter_config.json").read_text())
    model_args = f"pretrained={adapter['base_model_name_or_path']},peft={run_dir / 'model'},dtype=float32"
    model_args += ",mixed_precision_dtype=bfloat16"  # as the run's cpu profile evaluated (bf16 autocast)
    out = subprocess.run(
        [
            sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args", model_args, "--device", "cpu",
            "--include_path", str(ROOT / "rlhf" / "tasks"), "--tasks", "rlhf_general_mc",
            "--apply_chat_template", "--batch_size", "64", "--output_path", str(tmp_path / "out"),
        ],
        capture_output=True, text=True, cwd=tmp_path, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads(next((tmp_path / "out").rglob("results_*.json")).read_text())["results"]
    in_run = json.loads((run_dir / "eval.json").read_text())["after"]
    # the run scores with the adapter merged, the CLI through peft unmerged, both under bf16 autocast: the
    # random tiny model's four choices are near ties, so a few of the 139 may flip
    for metric in ("acc", "acc_norm"):
        assert results["rlhf_general_mc"][f"{metric},none"] == pytest.approx(
            in_run[f"rlhf_general_mc/{metric}"], abs=3 / 139
        )


def test_merged_export_is_a_plain_model_equal_to_base_plus_adapter(eval_run):
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM

    run_dir, _ = eval_run
    merged = AutoModelForCausalLM.from_pretrained(run_dir / "merged")
    assert not (run_dir / "merged" / "adapter_config.json").exists()
    adapter = AutoPeftModelForCausalLM.from_pretrained(run_dir / "model")
    ids = torch.tensor([[1, 5, 9, 13, 17]])
    # a base loaded in bf16 (a bf16 CPU) is merged and saved in bf16: W + BA rounds to bf16
    tol = 1e-4 if merged.dtype == torch.float32 else 3e-2
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits.float(), adapter(ids).logits, atol=tol, rtol=tol)


def test_evaluate_again_writes_new_files_and_keeps_the_old(eval_run, cache_dir):
    """`python -m rlhf.evaluate run=DIR ...`, in-process."""
    from rlhf import cli
    from rlhf.evaluate import __main__ as command
    from tests.conftest import in_process

    run_dir, _ = eval_run
    before = (run_dir / "eval.json").read_bytes()
    out = in_process(
        lambda argv: cli.run(command.main, argv),
        [f"run={run_dir}", "eval.tasks=[rlhf_general_mc]", "eval.limit=2"],
        {"RLHF_CACHE_DIR": str(cache_dir)},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    again = json.loads((run_dir / "eval-2.json").read_text())
    assert again["tasks"] == ["rlhf_general_mc"] and again["limit"] == 2
    assert set(again["after"]) == {"rlhf_general_mc/acc", "rlhf_general_mc/acc_norm"}
    assert (run_dir / "eval.json").read_bytes() == before and (run_dir / "eval-2.md").is_file()


def test_flatten_results_keeps_metrics_and_moves_stderr_aside():
    raw = {"t": {"alias": "t", "acc,none": 0.5, "acc_stderr,none": 0.1, "sample_len": 3, "em,strict": 1.0}}
    assert evaluate.flatten_results(raw) == {"t/acc": 0.5, "t/em_strict": 1.0}
    assert evaluate.flatten_results(raw, stderr=True) == {"t/acc": 0.1}


def test_a_reward_model_run_is_not_handed_to_lm_eval(rlhf_cli, tmp_path):
    out = rlhf_cli(
        "model=tiny", "method=rm", "method.max_steps=1", "eval.limit=2", f"hydra.run.dir={tmp_path}/rm"
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert not (tmp_path / "rm" / "eval.json").exists()
    assert "eval" not in json.loads((tmp_path / "rm" / "summary.json").read_text())


def test_lora_is_merged_only_while_scoring_and_gives_the_same_outputs(tiny):
    from peft import LoraConfig, get_peft_model

    model, _ = tiny("hardware.model_dtype=float32")  # the same function exactly (a bf16 base rounds W + BA)
    tuned = get_peft_model(
        model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    ids = torch.tensor([[1, 5, 9, 13, 17]])
    weights = {n: p.detach().clone() for n, p in tuned.named_parameters()}
    with torch.no_grad():
        unmerged = tuned(ids).logits
        with generation.lora_merged(tuned):
            assert all(m.merged for m in tuned.modules() if hasattr(m, "merged"))
            torch.testing.assert_close(tuned(ids).logits, unmerged, atol=1e-5, rtol=1e-5)
    assert not any(m.merged for m in tuned.modules() if hasattr(m, "merged"))
    for name, p in tuned.named_parameters():
        torch.testing.assert_close(p, weights[name], atol=1e-6, rtol=1e-6)


def test_a_delta_is_marked_real_only_beyond_twice_its_combined_stderr():
    from omegaconf import OmegaConf

    from rlhf.evaluate import tables

    se = 0.1 / 2**0.5  # each side: the combined stderr is 0.1
    before = {"scores": {"t/one": 0.5, "t/three": 0.5, "t/none": 0.5}, "stderr": {"t/one": se, "t/three": se}}
    after = {"scores": {"t/one": 0.6, "t/three": 0.8, "t/none": 0.9}, "stderr": {"t/one": se, "t/three": se}}
    cfg = OmegaConf.create({"tasks": ["t"], "limit": 20, "num_fewshot": None, "apply_chat_template": True})
    result = tables.record(cfg, before, after, {"before": 1.0, "after": 1.0}, False)
    assert result["significant"] == ["t/three"]  # 3 stderr: real; 1 stderr: noise; no stderr: untested
    assert result["delta_test"]["t/one"]["stderr"] == pytest.approx(0.1)
    assert result["delta_test"]["t/three"]["interval"] == pytest.approx([0.1, 0.5])
    assert "t/none" not in result["delta_test"]
    md = tables.markdown(result, "x")
    assert "| t | three | 0.500 | 0.800 | +0.300 | [+0.100, +0.500] | yes |" in md
    assert "| t | one | 0.500 | 0.600 | +0.100 | [-0.100, +0.300] | no (noise) |" in md


def test_a_task_from_the_users_include_path_runs(tiny, make_cfg, tmp_path):
    tasks = tmp_path / "my_tasks"
    tasks.mkdir()
    rows = [{"q": f"{i} + 1 =", "choices": [str(i + 1), str(i + 7)], "answer": 0} for i in range(6)]
    (tasks / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tasks / "my_sums.yaml").write_text(
        "task: my_sums\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {tasks / 'data.jsonl'}\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: '{{q}}'\n"
        "doc_to_choice: '{{choices}}'\ndoc_to_target: answer\nmetric_list:\n  - metric: acc\n"
    )
    cfg = make_cfg("model=tiny", "hardware=cpu", "eval.tasks=[my_sums]", f"eval.include_path=[{tasks}]")
    evaluate.check(cfg.eval)  # found among the user's tasks, no hub data needed
    model, tokenizer = tiny()
    scores = evaluate.score(cfg.eval, model, tokenizer, "fp32")["scores"]
    assert set(scores) == {"my_sums/acc"} and 0 <= scores["my_sums/acc"] <= 1
    missing = make_cfg("eval.tasks=[my_sums]", f"eval.include_path=[{tmp_path / 'nope'}]")
    with pytest.raises(evaluate.UserError, match="eval.include_path=.*nope: not a directory"):
        evaluate.check(missing.eval)

"""`python -m rlhf.compare`: a real two-job sweep on the tiny model, and hand-written run directories."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rlhf import cli, compare
from rlhf.compare import __main__ as command
from tests.conftest import ROOT

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def sweep(run_rlhf, tmp_path_factory) -> Path:
    """python -m rlhf -m ... method.lora_r=2,4: jobs 0_lora_tiny and 1_lora_tiny, two steps each."""
    sweep_dir = tmp_path_factory.mktemp("sweep")
    out = run_rlhf(
        "-m", "model=tiny", "hardware=cpu", "method=lora", "method.lora_r=2,4", "method.max_steps=2",
        "samples.max_new_tokens=4", "eval.limit=2", "eval.tasks=[rlhf_general_mc,rlhf_keyword_completion]",
        f"hydra.sweep.dir={sweep_dir}",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return sweep_dir


def md_rows(path: Path) -> list[dict[str, str]]:
    """The rows of compare.md's table as {column: cell}."""
    lines = [line for line in path.read_text().splitlines() if line.startswith("| ")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return [
        dict(zip(header, (c.strip() for c in line.strip("|").split("|")), strict=True)) for line in lines[2:]
    ]


def compare_main(capsys, *args: str) -> tuple[int, str, str]:
    """`python -m rlhf.compare ARGS` in-process -> (exit status, stdout, stderr)."""
    try:
        cli.run(command.main, list(args))
        code = 0
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_table_matches_each_jobs_summary(sweep, capsys):
    code, stdout, _ = compare_main(capsys, str(sweep))
    assert code == 0
    rows = md_rows(sweep / "compare.md")
    assert [r["method.lora_r"] for r in rows] == ["2", "4"]  # the swept value, and only that, leads
    assert list(rows[0])[:2] == ["method.lora_r", "train loss"]
    for row in rows:
        summary = json.loads((sweep / row["run"] / "summary.json").read_text())
        assert float(row["train loss"]) == pytest.approx(summary["loss_end_mean"], rel=1e-3)
        assert row["trainable params"].startswith(f"{summary['trainable_params']:,} (")
        assert float(row["tokens/s"]) == pytest.approx(summary["tokens_per_s"], rel=1e-3)
        scores = json.loads((sweep / row["run"] / "eval.json").read_text())
        after, delta = row["rlhf_general_mc/acc"].split()  # "0.5 (+0)": after, then the change from the base
        assert float(after) == pytest.approx(scores["after"]["rlhf_general_mc/acc"], abs=1e-3)
        assert float(delta.strip("()")) == pytest.approx(scores["delta"]["rlhf_general_mc/acc"], abs=1e-3)
    # the base model is scored once for the sweep: the second job reads the first job's base scores
    first, second = (json.loads((sweep / r["run"] / "eval.json").read_text()) for r in rows)
    assert second["base_from_cache"] is True
    assert first["before"] == second["before"]
    assert rows[0]["trainable params"] != rows[1]["trainable params"]  # rank 4 trains twice rank 2's weights
    assert "method.lora_r" in stdout and "1_lora_tiny" in stdout  # the same table on the terminal


def test_plots_are_valid_pngs(sweep, capsys):
    assert compare_main(capsys, str(sweep))[0] == 0
    curves = (sweep / "compare-curves.png").read_bytes()
    assert curves.startswith(PNG_SIGNATURE) and len(curves) > 10_000
    scores = (sweep / "compare-eval.png").read_bytes()  # each eval metric against method.lora_r
    assert scores.startswith(PNG_SIGNATURE) and len(scores) > 10_000
    assert "![compare-curves](compare-curves.png)" in (sweep / "compare.md").read_text()


def test_running_again_rewrites_its_own_files_but_not_the_users(sweep, tmp_path, capsys):
    assert compare_main(capsys, str(sweep), "--out", str(tmp_path))[0] == 0
    assert compare_main(capsys, str(sweep), "--out", str(tmp_path))[0] == 0  # its own output: rewritten
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "compare.md").write_text("my notes\n")
    code, _, err = compare_main(capsys, str(sweep), "--out", str(mine))
    assert code == 2 and "compare.md: exists and was not written by rlhf.compare" in err
    assert (mine / "compare.md").read_text() == "my notes\n" and not (mine / "compare-curves.png").exists()


def test_unfinished_and_missing_jobs_are_rows_marked_failed(sweep, tmp_path, capsys):
    copy = tmp_path / "sweep"
    shutil.copytree(sweep, copy, ignore=shutil.ignore_patterns("model", "compare*"))
    (copy / "1_lora_tiny" / "summary.json").unlink()  # crashed or still running
    assert compare_main(capsys, str(copy))[0] == 0
    rows = md_rows(copy / "compare.md")
    assert [(r["method.lora_r"], r["run"]) for r in rows] == [("2", "0_lora_tiny"), ("4", "1_lora_tiny")]
    assert rows[0]["train loss"] != "failed" and rows[1]["train loss"] == "failed"
    assert {cell for key, cell in rows[1].items() if key not in ("method.lora_r", "train loss", "run")} == {
        "-"
    }
    assert "running): 1_lora_tiny." in (copy / "compare.md").read_text()

    shutil.rmtree(copy / "0_lora_tiny")  # bad input removes a job's directory and stops the sweep
    assert compare_main(capsys, str(copy))[0] == 0
    rows = md_rows(copy / "compare.md")  # still in job order: the plan in multirun.yaml places it
    assert [(r["method.lora_r"], r["train loss"], r["run"]) for r in rows] == [
        ("2", "failed", "job 0 (no directory)"),
        ("4", "failed", "1_lora_tiny"),
    ]


def test_does_not_import_torch(sweep, tmp_path):
    code = (
        "import sys\nfrom rlhf import cli\nfrom rlhf.compare import __main__ as command\n"
        f"cli.run(command.main, [{str(sweep)!r}, '--out', {str(tmp_path)!r}])\n"
        "print('HEAVY', sorted(m for m in ('torch', 'transformers', 'trl', 'peft') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert "HEAVY []" in out.stdout, out.stdout + out.stderr
    assert (tmp_path / "compare-curves.png").is_file()


def test_bad_input_is_one_error_line_and_exit_2(tmp_path):
    def run(*args: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "rlhf.compare", *args]
        return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=60)

    cases = [
        ((str(tmp_path / "nope"),), "nope: no such directory; fix: pass a multirun directory"),
        ((str(tmp_path),), "holds no run (no .hydra/ in it or in its subdirectories); fix:"),
        ((), "the following arguments are required: DIR; fix:"),
    ]
    for args, expected in cases:
        out = run(*args)
        assert out.returncode == 2, out.stderr
        assert out.stderr.startswith("error: ") and out.stderr.count("\n") == 1, out.stderr
        assert expected in out.stderr and "Traceback" not in out.stderr
    assert list(tmp_path.iterdir()) == []  # nothing written


# --------------------------------------------------------------------------- hand-written run directories


def fake_run(
    path: Path, overrides: list[str], config: dict | None = None, summary: dict | None = None, **files: dict
) -> Path:
    """A finished run directory: .hydra/, summary.json (+ `summary`) and any other files given (eval=...)."""
    (path / ".hydra").mkdir(parents=True)
    (path / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (path / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config or {"method": {"name": "lora"}}))
    summary = {"loss_end_mean": 1.5, "trainable_params": 1000, "trainable_share": 0.01, **(summary or {})}
    for name, payload in {"summary": summary, **files}.items():
        (path / f"{name}.json").write_text(json.dumps(payload))
    return path


def eval_json(after: dict[str, float], delta: dict[str, float]) -> dict:
    before = {k: round(after[k] - delta[k], 6) for k in after}
    return {"tasks": ["rlhf_general_mc"], "limit": 5, "before": before, "after": after, "delta": delta}


def test_eval_columns_show_after_and_delta(tmp_path, capsys):
    mc, ifeval = "rlhf_general_mc/acc", "rlhf_instruction_following/prompt_level_acc"
    fake_run(
        tmp_path / "0_a", ["method=lora"], eval=eval_json({mc: 0.3, ifeval: 0.2}, {mc: 0.05, ifeval: 0.1})
    )
    fake_run(
        tmp_path / "1_b", ["method=dpo"], eval=eval_json({mc: 0.25, ifeval: 0.1}, {mc: 0.0, ifeval: -0.1})
    )
    fake_run(tmp_path / "2_c", ["method=prompt-tuning"])  # eval=none: no eval.json
    assert compare_main(capsys, str(tmp_path))[0] == 0
    rows = md_rows(tmp_path / "compare.md")
    assert [r["method"] for r in rows] == ["lora", "dpo", "prompt-tuning"]
    assert [r[mc] for r in rows] == ["0.3 (+0.05)", "0.25 (+0)", "-"]
    assert [r[ifeval] for r in rows] == ["0.2 (+0.1)", "0.1 (-0.1)", "-"]
    assert (tmp_path / "compare-eval.png").read_bytes().startswith(PNG_SIGNATURE)
    assert not (tmp_path / "compare-curves.png").exists()  # no metrics.jsonl: no curves


def test_method_results_and_reward_curves_where_present(tmp_path, capsys):
    metrics = "".join(json.dumps({"step": s, "loss": 1.0 / s, "reward": s / 10}) + "\n" for s in range(1, 30))
    fake_run(tmp_path / "0_ppo", ["method=ppo"], summary={"final_success_rate": 0.9})
    (tmp_path / "0_ppo" / "metrics.jsonl").write_text(metrics)
    fake_run(tmp_path / "1_sft", ["method=sft"])
    assert compare_main(capsys, str(tmp_path))[0] == 0
    rows = md_rows(tmp_path / "compare.md")
    assert [r["final success rate"] for r in rows] == ["0.9", "-"]
    assert (tmp_path / "compare-curves.png").read_bytes().startswith(PNG_SIGNATURE)


def test_identical_overrides_fall_back_to_the_resolved_config(tmp_path):
    """Two runs of one command line, a YAML edited in between: the config says what differs."""
    config = {"method": {"name": "lora", "lora_r": 16, "learning_rate": 2e-4}, "seed": 42}
    a = fake_run(tmp_path / "a", ["model=tiny"], config)
    b = fake_run(tmp_path / "b", ["model=tiny"], {**config, "method": {**config["method"], "lora_r": 8}})
    runs = compare.collect([a, b])
    assert [run.swept for run in runs] == [{"method.lora_r": "16"}, {"method.lora_r": "8"}]


def test_a_key_overridden_in_one_run_only_shows_the_others_config_value(tmp_path):
    config = {"method": {"name": "lora", "lora_r": 16}}
    a = fake_run(tmp_path / "a", ["model=tiny", "method.lora_r=4"], config)
    b = fake_run(tmp_path / "b", ["model=tiny"], config)
    assert [run.swept for run in compare.collect([a, b])] == [{"method.lora_r": "4"}, {"method.lora_r": "16"}]
    assert command.default_out([a, b]) == tmp_path  # several run directories: the first one's parent


def test_the_peft_vs_dpo_preset_sweeps_three_methods_and_dpo_keeps_its_data():
    from rlhf import config

    cfg = config.compose(["experiment=peft-vs-dpo"], return_hydra_config=True)
    dpo = config.compose(["experiment=peft-vs-dpo", "method=dpo"])
    assert cfg.hydra.sweeper.params == {"method": "lora,prompt-tuning,dpo"}
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"  # a sweep even without -m
    assert (dpo.method.name, dpo.data.name) == ("dpo", "preferences")

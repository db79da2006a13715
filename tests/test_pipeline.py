"""python -m rlhf.pipeline: stages in order, each reading the one before; a re-run skips finished stages and
resumes an interrupted one; the end is the comparison report."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT

TINY = '["model=tiny","hardware=cpu","logger=none","eval=none","method.max_steps=2"]'


def pipeline(cache_dir, *args: str) -> subprocess.CompletedProcess:
    env = {"RLHF_CACHE_DIR": str(cache_dir), "NETRC": str(cache_dir / "no-netrc"), "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [sys.executable, "-m", "rlhf.pipeline", *args], capture_output=True, text=True, cwd=ROOT, env=env
    )


@pytest.fixture(scope="module")
def three_stage(cache_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline") / "rlhf-three-stage"
    out = pipeline(cache_dir, "pipeline=rlhf-three-stage", f"common={TINY}", f"dir={root}")
    assert out.returncode == 0, out.stderr[-3000:]
    return root, out


def test_stages_run_in_order_each_reading_the_one_before(three_stage):
    root, out = three_stage
    for stage in ("sft", "rm", "ppo"):
        assert (root / stage / "summary.json").is_file(), stage
    sft = json.loads((root / "sft" / "summary.json").read_text())
    assert sft["trainable_params"] > 0  # counted before export.merge folded the adapter in
    assert (root / "sft" / "merged" / "model.safetensors").is_file()
    rm_config = (root / "rm" / ".hydra" / "config.yaml").read_text()
    assert f"path: {root / 'sft' / 'merged'}" in rm_config  # ${stage:sft}/merged, resolved
    ppo = json.loads((root / "ppo" / "summary.json").read_text())
    assert ppo["method"] == "ppo" and "rewards/model" in (root / "ppo" / "metrics.jsonl").read_text()
    assert (root / "compare.md").is_file() and "| ppo |" in (root / "compare.md").read_text()
    assert out.stdout.index("[1/3] sft") < out.stdout.index("[2/3] rm") < out.stdout.index("[3/3] ppo")


def test_a_rerun_skips_finished_stages_and_resumes_an_interrupted_one(three_stage, cache_dir):
    root, _ = three_stage
    before = {s: (root / s / "summary.json").stat().st_mtime_ns for s in ("sft", "rm")}
    (root / "ppo" / "summary.json").unlink()  # as if ppo had been stopped after its last checkpoint
    out = pipeline(cache_dir, "pipeline=rlhf-three-stage", f"common={TINY}", f"dir={root}")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "[1/3] sft (train): finished before, skipped" in out.stdout
    assert "[2/3] rm (train): finished before, skipped" in out.stdout
    assert "[3/3] ppo (train): resumed" in out.stdout
    assert {s: (root / s / "summary.json").stat().st_mtime_ns for s in ("sft", "rm")} == before
    assert json.loads((root / "ppo" / "summary.json").read_text())["resumed_from_step"] == 2


def test_a_reference_to_a_later_stage_is_one_line(cache_dir, tmp_path):
    out = pipeline(
        cache_dir,
        "pipeline=rlhf-three-stage",
        f"dir={tmp_path}",
        'pipeline.stages.0.overrides=["model.path=${stage:ppo}/model"]',
    )
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "error: ${stage:ppo}: no stage ppo before this one (stages so far: none)" in out.stderr

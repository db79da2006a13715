"""logger=wandb (offline, one group per sweep, no secrets), multirun failures, optimize_metric, the optuna preset.

The offline runs are read back from their `.wandb` files: wandb writes no config or summary file offline.
"""

from __future__ import annotations

import json
import math
import shutil
import struct
import time
from pathlib import Path

import pytest
import yaml

from rlhf import sweep, tracking
from rlhf.errors import ConfigError, UserError
from rlhf.validate import validate
from tests.conftest import ROOT

SECRET = "wb-test-secret-6f1c0d9a7e"  # stands for an API key: it must reach no file of a run


def read_wandb_run(job_dir: Path) -> dict:
    """The run, config, summary, history, exit code and record types (in order) of the offline run in
    job_dir/wandb/."""
    (path,) = job_dir.glob("wandb/offline-run-*/run-*.wandb")
    # wandb's service writes the file in its own process: a run finished in this process may not be all there
    # yet, so read until its exit record is in (or 30 s have passed)
    deadline = time.monotonic() + 30
    while (out := parse_wandb_file(path))["exit_code"] is None and time.monotonic() < deadline:
        time.sleep(0.5)
    return out


def parse_wandb_file(path: Path) -> dict:
    """An offline run is a LevelDB-style log of wandb's protobuf `Record`s: a 7-byte header, then 32 KiB blocks
    of chunks (crc32: 4 bytes, length: 2, type: 1 = whole record, 2/3/4 = first/middle/last piece)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, piece, block = path.read_bytes(), 7, b"", 32768
    assert data.startswith(b":W&B")
    out: dict = {"config": {}, "summary": {}, "history": [], "exit_code": None, "records": []}

    def items(updates) -> dict:
        return {u.key or "/".join(u.nested_key): json.loads(u.value_json) for u in updates}

    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        piece, pos = piece + data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind not in (1, 4):
            continue
        record = pb.Record.FromString(piece)
        piece, which = b"", record.WhichOneof("record_type")
        out["records"].append(which)
        if which == "run":
            out.update(group=record.run.run_group, job_type=record.run.job_type, name=record.run.display_name)
            out["config"].update(items(record.run.config.update))
        elif which == "config":
            out["config"].update(items(record.config.update))
        elif which == "summary":
            out["summary"].update(items(record.summary.update))
        elif which == "history":
            out["history"].append(items(record.history.item))
        elif which == "exit":
            out["exit_code"] = record.exit.exit_code
    return out


def files_under(path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if p.is_file()]


# --------------------------------------------------------------------------- units


def test_no_key_means_offline_and_a_key_means_online(monkeypatch, tmp_path):
    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    assert tracking.resolve_mode("auto") == "offline"  # no netrc file at all
    (tmp_path / "netrc").write_text("machine api.wandb.ai\n  login user\n  password abc123\n")
    (tmp_path / "netrc").chmod(0o600)
    assert tracking.resolve_mode("auto") == "online"
    monkeypatch.setenv("WANDB_MODE", "offline")  # the user's own choice wins
    assert tracking.resolve_mode("auto") == "offline"
    assert tracking.resolve_mode("online") == "online"


def test_online_without_a_key_is_a_config_error_not_a_crash(make_cfg, monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    validate(make_cfg("logger.mode=auto"))
    with pytest.raises(ConfigError) as err:
        validate(make_cfg("logger.mode=online"))
    assert err.value.problems == [
        "logger.mode=online: no wandb API key (WANDB_API_KEY, or a netrc entry that `wandb login` writes); "
        "fix: run `wandb login` or set WANDB_API_KEY; logger.mode=auto runs offline without a key"
    ]
    with pytest.raises(ConfigError, match="logger.mode=cloud: unknown value"):
        validate(make_cfg("logger.mode=cloud"))


def test_secrets_never_reach_the_wandb_config(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", SECRET)
    config = {
        "logger": {"project": "rlhf", "api_key": "k", "apiKey": "k", "WANDB_TOKEN": "t"},
        "hub": {"password": "p", "client_secret": "s", "credentials": {"x": 1}},
        "method": {"max_new_tokens": 8, "num_virtual_tokens": 4, "keywords": ["happy"]},
        "data": {"path": f"https://user:{SECRET}@host/data.jsonl", "paths": ["a", f"x{SECRET}"]},
    }
    assert tracking.public_config(config) == {
        "logger": {"project": "rlhf"},
        "hub": {},
        "method": {"max_new_tokens": 8, "num_virtual_tokens": 4, "keywords": ["happy"]},
        "data": {"paths": ["a"]},
    }


def test_nested_summary_is_flattened_for_wandb():
    summary = {
        "loss_end_mean": 1.5,
        "tokens_per_s": None,
        "eval": {"mc/acc": 0.5},
        "eval_delta": {"t": {"a": 1}},
    }
    assert tracking.flatten_nested(summary) == {"loss_end_mean": 1.5, "eval/mc/acc": 0.5, "eval_delta/t/a": 1}


def test_optimize_metric_reads_top_level_and_nested_keys():
    summary = {
        "method": "lora",
        "loss_end_mean": 1.5,
        "first_loss": None,
        "eval": {"rlhf_general_mc/acc": 0.25},
    }
    assert sweep.objective(summary, "loss_end_mean") == 1.5
    assert sweep.objective(summary, "eval.rlhf_general_mc/acc") == 0.25  # split on the first "."
    assert math.isnan(sweep.objective(summary, "first_loss"))  # no value: a failed trial, not a crash
    with pytest.raises(UserError) as err:
        sweep.objective(summary, "loss_end")
    assert str(err.value) == (
        "optimize_metric=loss_end: not a number in summary.json; "
        "fix: choose one of: loss_end_mean, first_loss, eval.rlhf_general_mc/acc"
    )


# --------------------------------------------------------------------------- sweeps, end to end


@pytest.fixture(scope="module")
def lora_sweep(run_rlhf, tmp_path_factory):
    """Two LoRA jobs on the tiny model, an API key in the environment (offline: no network in tests)."""
    sweep_dir = tmp_path_factory.mktemp("sweeps") / "lora"
    out = run_rlhf(
        "-m", "model=tiny", "method=lora", "method.lora_r=2,4", "method.max_steps=3", "logger.mode=offline", "samples.max_new_tokens=8",
        f"hydra.sweep.dir={sweep_dir}", env={"WANDB_API_KEY": SECRET},
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return sweep_dir, out


def test_a_sweep_runs_complete_jobs_in_one_wandb_group(lora_sweep):
    sweep_dir, out = lora_sweep
    jobs = sorted(p for p in sweep_dir.iterdir() if p.is_dir())
    assert [j.name for j in jobs] == ["0_lora_tiny", "1_lora_tiny"]
    runs = []
    for job, lora_r in zip(jobs, [2, 4], strict=True):
        assert (job / "model" / "adapter_model.safetensors").is_file() and (job / ".hydra").is_dir()
        assert not (job / sweep.FAILED).exists()
        summary = json.loads((job / "summary.json").read_text())
        assert summary["libraries_left_out"] == []  # the jobs share one process: each keeps every library
        metrics = [json.loads(line) for line in (job / "metrics.jsonl").read_text().splitlines()]
        run = read_wandb_run(job)
        assert run["summary"]["loss_end_mean"] == pytest.approx(summary["loss_end_mean"])
        # the rows of metrics.jsonl, at their steps
        assert [(r["_step"], r["loss"]) for r in run["history"] if "loss" in r] == [
            (m["step"], m["loss"]) for m in metrics if "loss" in m
        ]
        assert run["job_type"] == "lora" and run["exit_code"] == 0
        assert run["config"]["method"]["lora_r"] == lora_r and run["config"]["model"]["name"] == "tiny"
        runs.append(run)
    assert runs[0]["group"] == runs[1]["group"] == str(sweep_dir)
    assert [r["name"] for r in runs] == [
        "lora-tiny method.lora_r=2 method.max_steps=3 logger.mode=offline samples.max_new_tokens=8",
        "lora-tiny method.lora_r=4 method.max_steps=3 logger.mode=offline samples.max_new_tokens=8",
    ]
    assert "2 of 2 jobs finished" in out.stdout
    assert f"wandb sync {sweep_dir}/*/wandb/offline-run-*" in out.stdout


def test_an_api_key_in_the_environment_reaches_no_file_of_the_run(lora_sweep):
    sweep_dir, _ = lora_sweep
    files = files_under(sweep_dir)
    assert any("wandb" in p.parts for p in files)
    assert not [p for p in files if SECRET.encode() in p.read_bytes()]


@pytest.mark.slow
def test_a_failed_job_is_recorded_and_the_others_still_run(run_rlhf, tmp_path):
    """The first job crashes in its first training step (tests/faults), after its wandb run started."""
    out = run_rlhf(
        "-m", "model=tiny", "method=lora", "method.lora_r=2,4", "method.max_steps=2", "samples.max_new_tokens=8",
        f"hydra.sweep.dir={tmp_path}", env={"PYTHONPATH": str(ROOT / "tests" / "faults")},
    )  # fmt: skip
    assert out.returncode == 1, out.stderr[-3000:]
    failed, finished = tmp_path / "0_lora_tiny", tmp_path / "1_lora_tiny"
    assert not (failed / "summary.json").exists()
    record = json.loads((failed / sweep.FAILED).read_text())
    assert "injected crash" in record["error"] and "Traceback" in record["traceback"]
    assert (finished / "summary.json").is_file() and not (finished / sweep.FAILED).exists()
    assert f"{failed}: RuntimeError: injected crash" in out.stderr  # the report at the end
    assert "1 of 2 jobs finished" in out.stdout
    runs = [read_wandb_run(failed), read_wandb_run(finished)]  # no key in the environment: offline
    assert [r["exit_code"] for r in runs] == [1, 0] and runs[0]["group"] == runs[1]["group"]


def test_bad_input_stops_a_sweep_at_once_with_one_line(run_rlhf, tmp_path):
    out = run_rlhf(
        "-m", "model=tiny", "method.lora_r=-1", "method.max_steps=1,2", f"hydra.sweep.dir={tmp_path}"
    )
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert [line for line in out.stderr.splitlines() if line.startswith("error: ")] == [
        "error: method.lora_r=-1: must be positive; fix: use e.g. lora_r=16"
    ]
    assert not [p for p in tmp_path.iterdir() if p.is_dir()], "no job directory is left behind"


@pytest.mark.slow
def test_optuna_preset_runs_trials_and_logger_none_leaves_no_wandb(run_rlhf, tmp_path):
    out = run_rlhf(
        "-m", "hparams_search=lora_optuna", "model=tiny", "method.max_steps=2", "hydra.sweeper.n_trials=2",
        "logger=none", "samples.max_new_tokens=8", f"hydra.sweep.dir={tmp_path}",
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    jobs = sorted(p for p in tmp_path.iterdir() if p.is_dir())
    assert len(jobs) == 2
    losses = [json.loads((job / "summary.json").read_text())["loss_end_mean"] for job in jobs]
    result = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    assert result["best_value"] == pytest.approx(min(losses))
    assert set(result["best_params"]) == {"method.lora_r", "method.lora_alpha", "method.learning_rate"}
    assert not [p for p in tmp_path.rglob("*") if "wandb" in p.name]


@pytest.mark.parametrize(
    "launcher,expected,lines",
    [
        (
            ["hydra/launcher=submitit-local", "hydra.launcher.tasks_per_node=2"],
            "hydra.launcher.tasks_per_node=2: ",
            1,
        ),
        (["hydra/launcher=slurm", "hydra.launcher.nodes=2"], "hydra.launcher.nodes=2: ", 2),  # and no srun
        (["hydra/launcher=slurm"], "hydra/launcher=slurm: this machine has no srun", 1),
    ],
)
def test_a_submitit_sweep_it_cannot_run_as_set_is_refused_before_it_submits(
    rlhf_cli, tmp_path, launcher, expected, lines
):
    """Several tasks per job would each train the whole job into one directory (submitit-local ran both);
    hydra/launcher=slurm without Slurm ended in submitit's traceback. Now one line each, exit 2, no sweep."""
    if shutil.which("srun"):
        pytest.skip("this machine has Slurm")
    sweep = tmp_path / "sweep"
    out = rlhf_cli(
        "-m", *launcher, "model=tiny", "method.max_steps=1", "eval=none", f"hydra.sweep.dir={sweep}"
    )
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-3000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    assert errors[0].startswith("error: " + expected) and "; fix: " in errors[0], errors
    assert len(errors) == lines, errors
    assert not sweep.exists()


def test_slurm_launcher_preset_composes_offline(run_rlhf):
    out = run_rlhf("hydra/launcher=slurm", "--cfg", "hydra")
    assert out.returncode == 0, out.stderr
    launcher = yaml.safe_load(out.stdout)["hydra"]["launcher"]
    assert launcher["_target_"].endswith("submitit_launcher.SlurmLauncher")
    assert (launcher["gpus_per_node"], launcher["tasks_per_node"], launcher["partition"]) == (1, 1, None)

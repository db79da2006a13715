"""Durable runs: a run stopped by a real signal at a step, then resumed, ends exactly where an uninterrupted
run with the same seed ends (every logged loss, reward and KL; the final weights bit for bit), for every
method; a run killed outright loses at most the steps since its last checkpoint; an incomplete checkpoint
is never resumed from; a resume that would change the result is refused."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlhf import checkpoint, methods
from tests.conftest import ROOT

STEPS = 4
# small, exact runs: fp32 (no autocast), no eval, a checkpoint after every step
BASE = ["model=tiny", "hardware=cpu", "hardware.precision=fp32", "eval=none", "logger=none"]
BASE += [f"method.max_steps={STEPS}", "checkpoint.every=1"]
SMALL = {  # the RL methods' rollouts, shrunk to a few completions
    "ppo": ["method.batch_size=4", "method.mini_batch_size=2", "method.ppo_epochs=1"],
    "grpo": ["method.num_generations=2"],
    "rloo": ["method.num_generations=2"],
}
# settings with a checkpoint of their own kind: the optimizer stepped in backward (rlhf.models.in_backward)
VARIANTS = {
    "sft-in-backward": ["method=sft", "hardware.optimizer_in_backward=true", "method.max_grad_norm=0"]
}
# what each step logs that must come out the same: the loss, and the rewards and KL where a method has them
COMPARED = ("loss", "reward", "kl", "rewards/margins", "grad_norm")


def args_for(method: str) -> list[str]:
    if method in VARIANTS:
        return [*BASE, *VARIANTS[method]]
    return [*BASE, f"method={method}", *SMALL.get(method, [])]


def curve(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: r[k] for k in ("step", *COMPARED) if k in r} for r in rows if "loss" in r or "reward" in r]


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    found = {}
    for file in sorted((run_dir / "model").glob("*.safetensors")):  # adapter or model, and ppo's value head
        found.update({f"{file.name}:{k}": v for k, v in load_file(file).items()})
    return found


def signal_at_step(run_dir: Path, step: int, send) -> threading.Thread:
    """A watcher that calls send() once metrics.jsonl has a row of `step`."""

    def watch():
        deadline = time.time() + 120
        while time.time() < deadline:
            file = run_dir / "metrics.jsonl"
            if file.is_file() and any(
                json.loads(x)["step"] >= step for x in file.read_text().splitlines() if x
            ):
                send()
                return
            time.sleep(0.01)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


@pytest.fixture(scope="module")
def uninterrupted(rlhf_cli, tmp_path_factory):
    """method -> the run directory of an uninterrupted run (made once per method)."""
    made = {}

    def get(method: str) -> Path:
        if method not in made:
            run_dir = tmp_path_factory.mktemp("whole") / method
            out = rlhf_cli(*args_for(method), f"hydra.run.dir={run_dir}")
            assert out.returncode == 0, out.stderr[-3000:]
            made[method] = run_dir
        return made[method]

    return get


def assert_same_end(resumed: Path, whole: Path) -> None:
    assert curve(resumed) == curve(whole)
    a, b = weights(resumed), weights(whole)
    assert a.keys() == b.keys() and a
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


# one of each kind in the fast tier: adapter SFT, preferences, our RL, the optimizer stepped in backward
FAST_RESUME = ("lora", "dpo", "ppo", "sft-in-backward")


def resume_marks(method: str) -> list:
    # ppo here accumulates 5 mini-batches of 2 per optimizer step over rollouts of 4: most checkpoints fall
    # between two optimizer steps, so its case also checks that the pending gradients are carried over
    return [] if method in FAST_RESUME else [pytest.mark.slow]


@pytest.mark.parametrize(
    "method", [pytest.param(m, marks=resume_marks(m)) for m in [*methods.names(), *VARIANTS]]
)
def test_a_run_stopped_by_a_signal_resumes_to_the_same_end(method, rlhf_cli, uninterrupted, tmp_path):
    """SIGINT (here, to this process, at step 2) finishes the step, checkpoints and stops; resume= continues."""
    run_dir = tmp_path / "stopped"
    signal_at_step(run_dir, 2, lambda: os.kill(os.getpid(), signal.SIGINT))
    stopped = rlhf_cli(*args_for(method), f"hydra.run.dir={run_dir}")
    assert stopped.returncode == 128 + signal.SIGINT, stopped.stderr[-3000:]
    record = json.loads((run_dir / "interrupted.json").read_text())
    assert record["signal"] == "SIGINT" and 2 <= record["step"] < STEPS
    assert record["resume"] == f"python -m rlhf resume={run_dir}"
    assert not (run_dir / "summary.json").exists() and not (run_dir / "model").exists()  # nothing looks done

    resumed = rlhf_cli(f"resume={run_dir}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not (run_dir / "interrupted.json").exists()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["resumed_from_step"] == record["step"] and summary["steps"] == STEPS
    assert summary["checkpoints_written"] == STEPS  # every=1: one per step, the stopped segment's counted
    assert_same_end(run_dir, uninterrupted(method))


@pytest.mark.slow
def test_a_ppo_checkpoint_of_the_earlier_layout_still_resumes(rlhf_cli, uninterrupted, tmp_path):
    """Before each rank kept its own RNG, a ppo checkpoint held rank 0's in rng.safetensors and state.json: an
    interrupted run of that version resumes on this one to the same end."""
    run_dir = tmp_path / "stopped"
    signal_at_step(run_dir, 2, lambda: os.kill(os.getpid(), signal.SIGINT))
    assert rlhf_cli(*args_for("ppo"), f"hydra.run.dir={run_dir}").returncode == 128 + signal.SIGINT
    last = checkpoint.latest(run_dir)
    (last / "rng-0.safetensors").rename(last / "rng.safetensors")
    state = json.loads((last / "state.json").read_text())
    state.update(json.loads((last / "rng-0.json").read_text()))  # python_random, numpy_random
    (last / "state.json").write_text(json.dumps(state))
    (last / "rng-0.json").unlink()

    resumed = rlhf_cli(f"resume={run_dir}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_end(run_dir, uninterrupted("ppo"))


def test_a_killed_process_loses_only_the_steps_since_its_last_checkpoint(rlhf_cli, uninterrupted, tmp_path):
    """SIGKILL to a real `python -m rlhf` process at step 3; its newest checkpoint's marker removed as well
    (as if killed while saving): the resume starts from the checkpoint before it and ends the same."""
    run_dir = tmp_path / "killed"
    env = {**os.environ, "RLHF_CACHE_DIR": os.environ.get("RLHF_CACHE_DIR", ""), "MKL_CBWR": "AUTO"}
    env = {k: v for k, v in env.items() if v and not k.startswith("WANDB_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "rlhf", *args_for("lora"), f"hydra.run.dir={run_dir}", "checkpoint.keep=3"],
        cwd=ROOT,
        env={**env, "RLHF_CACHE_DIR": str(uninterrupted("lora").parent.parent / "cache")},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    signal_at_step(run_dir, 3, proc.kill).join(timeout=180)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    assert not (run_dir / "summary.json").exists() and not (run_dir / "interrupted.json").exists()
    done = checkpoint.complete(run_dir)
    assert done, "a checkpoint after every step: at least step 1's is complete"
    (done[-1] / checkpoint.MARKER).unlink()  # the newest one is now incomplete: never resumed from
    expected = checkpoint.step_of(done[-2]) if len(done) > 1 else None
    resumed = rlhf_cli(f"resume={run_dir}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert expected is None or summary["resumed_from_step"] == expected
    assert_same_end(run_dir, uninterrupted("lora"))


def test_a_resume_that_would_change_the_result_is_refused(rlhf_cli, uninterrupted):
    run_dir = uninterrupted("lora")
    # its own directory is what a launch's processes are given (rlhf.distributed), another one is refused
    for change in ("method.learning_rate=1e-3", "seed=7", "method=sft", f"hydra.run.dir={run_dir}-copy"):
        out = rlhf_cli(f"resume={run_dir}", change)
        assert out.returncode == 2 and out.stderr.count("error: ") == 1, out.stderr
        assert out.stderr.startswith(f"error: {change}: would change what the run trained")


def test_resuming_a_finished_run_says_so_and_changes_nothing(rlhf_cli, uninterrupted):
    run_dir = uninterrupted("sft")
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}
    out = rlhf_cli(f"resume={run_dir}", "checkpoint.keep=5")  # an allowed override, but nothing to do
    assert out.returncode == 0 and "the run is finished (summary.json); nothing to resume" in out.stdout
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()} == before


def test_checkpoints_are_published_whole_and_only_the_newest_kept(uninterrupted):
    run_dir = uninterrupted("lora")
    kept = [checkpoint.step_of(p) for p in checkpoint.complete(run_dir)]
    assert kept == [STEPS - 1, STEPS]  # the cpu profile keeps 2
    assert not checkpoint.incoming(run_dir).exists()
    marker = json.loads((checkpoint.latest(run_dir) / checkpoint.MARKER).read_text())
    assert marker["step"] == STEPS and marker["checkpoints_written"] == STEPS


def test_a_killed_sweep_resumes_without_running_its_finished_jobs_again(run_rlhf, cache_dir, tmp_path):
    """Three jobs; the process is killed while the second trains. The same command with resume=<sweep dir>
    leaves the first as it was, continues the second from its checkpoint and runs the third."""
    sweep = ["-m", *BASE, "method.lora_r=2,4,8", f"hydra.sweep.dir={tmp_path}"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(RLHF_CACHE_DIR=str(cache_dir), MKL_CBWR="AUTO")
    proc = subprocess.Popen(
        [sys.executable, "-m", "rlhf", *sweep],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    jobs = [tmp_path / f"{n}_lora_tiny" for n in range(3)]
    signal_at_step(jobs[1], 2, proc.kill).join(timeout=300)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    assert (jobs[0] / "summary.json").is_file() and not (jobs[1] / "summary.json").exists()
    first = (jobs[0] / "summary.json").stat().st_mtime_ns

    out = run_rlhf(*sweep, f"resume={tmp_path}")
    assert out.returncode == 0, out.stderr[-3000:]
    summaries = [json.loads((job / "summary.json").read_text()) for job in jobs]
    assert (jobs[0] / "summary.json").stat().st_mtime_ns == first  # not run again
    assert summaries[1]["resumed_from_step"] is not None and summaries[1]["steps"] == STEPS
    assert summaries[2]["resumed_from_step"] is None and summaries[2]["steps"] == STEPS
    assert "3 of 3 jobs finished" in out.stdout
    refused = run_rlhf(
        *[a for a in sweep if a != "method.lora_r=2,4,8"], "method.lora_r=2,4", f"resume={tmp_path}"
    )
    assert refused.returncode == 2 and refused.stderr.count("error: ") == 1
    assert (
        "the sweep ran with " in refused.stderr
        and " method.lora_r=2,4,8; fix: resume it with" in refused.stderr
    )


def test_a_resumed_run_continues_its_wandb_run(rlhf_cli, tmp_path):
    run_dir = tmp_path / "tracked"
    tracked = [a for a in args_for("lora") if a != "logger=none"]  # logger=wandb: offline without a key
    signal_at_step(run_dir, 2, lambda: os.kill(os.getpid(), signal.SIGINT))
    assert rlhf_cli(*tracked, f"hydra.run.dir={run_dir}").returncode == 128 + signal.SIGINT
    resumed = rlhf_cli(f"resume={run_dir}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    segments = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(segments) == 2 and len({p.name.rsplit("-", 1)[1] for p in segments}) == 1  # one run id
    run_id = segments[0].name.rsplit("-", 1)[1]
    assert f"wandb sync {run_dir}/wandb/offline-run-*-{run_id}" in resumed.stdout


def test_the_same_signal_twice_at_once_is_one_request_and_a_later_one_stops_at_once(tmp_path):
    """Slurm signals every process of a job and a launcher passes the signal on too, so a training process gets
    the same SIGTERM twice: that is one request (finish the step and checkpoint), not the second one that
    stops the process at once; a signal after REPEAT_S is the second one."""
    script = tmp_path / "stopped.py"
    script.write_text(
        "import os, signal, time\n"
        "from rlhf import checkpoint\n"
        "stop = checkpoint.StopRequest().install()\n"
        "os.kill(os.getpid(), signal.SIGTERM)  # the scheduler's\n"
        "time.sleep(0.2)\n"
        "os.kill(os.getpid(), signal.SIGTERM)  # the launcher's copy\n"
        "time.sleep(0.2)\n"
        "print('stopping on', stop.signal, flush=True)\n"
        "time.sleep(checkpoint.REPEAT_S)\n"
        "os.kill(os.getpid(), signal.SIGTERM)  # a second request\n"
        "time.sleep(5)\n"
        "print('still running', flush=True)\n"
    )
    out = subprocess.run([sys.executable, str(script)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    said = [line for line in out.stdout.splitlines() if line.startswith(("stopping", "still", "SIGTERM"))]
    assert said == [  # the handler's line once, then the script's
        "SIGTERM: finishing this step, saving a checkpoint, then stopping (again: stop at once)",
        f"stopping on {int(signal.SIGTERM)}",
    ], out.stderr[-2000:]
    assert out.returncode == -signal.SIGTERM


def _agree_on_two_ranks(rank: int, port: int, wants: list[dict], out: Path) -> None:
    """One rank of test_the_ranks_agree_to_save_and_stop_when_any_one_asks: set what this rank alone saw,
    agree, and write what the plan decided."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        decided = []
        for want in wants:
            plan = checkpoint.Plan(run_dir=out, every=0, keep=1, at_end=False, stop=checkpoint.StopRequest())
            plan.wanted = want["wanted"][rank]
            plan.halt = "length_hacking: above 0.9" if want["halt"][rank] else None
            plan.stop.signal = want["signal"][rank]
            plan.agree()
            decided.append(
                {"due": plan.due(5, last=False), "ends": plan.ends_here(5), "halt": plan.halt}
                | {"signal": plan.stop.signal}
            )
        (out / f"rank{rank}.json").write_text(json.dumps(decided))
    finally:
        dist.destroy_process_group()


def test_the_ranks_agree_to_save_and_stop_when_any_one_asks(tmp_path):
    """Only rank 0's monitor sees a TRL trainer's logs, our PPO's ranks see their own rollouts, and a scheduler
    may signal one process: a stop or checkpoint that one rank has is taken by every rank at the same step (a
    rank that stopped alone would leave the others in mismatched collectives)."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    none = {"wanted": [False, False], "halt": [False, False], "signal": [None, None]}
    wants = [
        none,  # nothing on either rank: nothing on either
        {**none, "halt": [False, True]},  # rank 1's monitor stops the run
        {**none, "wanted": [True, False]},  # rank 0's monitor asks for a checkpoint
        {**none, "signal": [None, int(signal.SIGTERM)]},  # SIGTERM reached rank 1 only
    ]
    mp.spawn(_agree_on_two_ranks, args=(port, wants, tmp_path), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for r in ranks:
        assert [(d["due"], d["ends"]) for d in r] == [
            (False, False),
            (True, True),
            (True, False),
            (True, True),
        ]
        assert r[3]["signal"] == signal.SIGTERM  # both exit as the signalled process does: 128 + 15
    assert ranks[1][1]["halt"].startswith("length_hacking")  # its own reason where it fired
    assert "another process" in ranks[0][1]["halt"]  # and a pointer to it elsewhere

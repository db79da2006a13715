"""Multirun: a crashed job does not end the sweep; the value a sweeper optimises; the report at the end.

Hydra's BasicSweeper runs a whole batch and then re-raises the first failed job's exception (traceback, exit
1, the other failures unreported); the optuna sweeper stops at the first failed trial. So in multirun mode
`keep_going` catches a job's crash, leaves `failed.json` in the job's directory (never a summary.json) and
returns NaN (optuna records the trial as failed and goes on); `FailedJobs`, a Hydra callback, lists those
jobs when the sweep ends and exits 1. Bad input is not a crash: it still stops the sweep at once with its one
line and exit 2, since every later job would most likely meet it too.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import shutil
import signal
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback

from rlhf import checkpoint, tracking
from rlhf.errors import EXIT_CODE, UserError, describe, print_errors

FAILED = "failed.json"
log = logging.getLogger(__name__)


def preempt_signals() -> tuple[int, ...]:
    """The warning a submitit job gets before its time limit or a preemption (hydra/launcher=slurm sbatches
    `--signal=USR2@120`; SUBMITIT_PREEMPT_SIGNAL names another): a run stops on it as on SIGTERM, at a step
    boundary with a checkpoint, then hands it to submitit, which requeues the job. Slurm signals every
    process of the job, so under a distributed preset the launcher and the ranks take it as a stop too, and
    the job's own process hands it to submitit once the launch has stopped (rlhf.distributed.run). Outside a
    submitit job, none."""
    if not os.environ.get("SUBMITIT_EXECUTOR"):
        return ()
    found = getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"), None)
    return (found,) if found is not None else ()


def requeued(run_dir: Path) -> bool:
    """A submitit job run again after its warning stopped it (its directory holds the interrupted.json that
    stop wrote): it resumes as with resume=auto."""
    return bool(preempt_signals()) and (Path(run_dir) / checkpoint.INTERRUPTED).is_file()


def keep_going(main: Callable[[Any], float | None]) -> Callable[[Any], float | None]:
    """Wrap the task function: a failed job ends its wandb run as failed; in a multirun, the sweep goes on."""

    @functools.wraps(main)
    def job(cfg: Any) -> float | None:
        try:
            return main(cfg)
        except BaseException as ex:
            tracking.abort()
            hc = HydraConfig.get()
            if hc.mode.name != "MULTIRUN" or not isinstance(ex, Exception):
                raise  # a single run reports as before; Ctrl-C ends a sweep
            if isinstance(ex, UserError):
                if os.environ.get("HYDRA_FULL_ERROR") == "1":
                    raise
                print_errors(describe(ex))
                sys.exit(EXIT_CODE)  # SystemExit passes through Hydra's launcher: the sweep stops here
            record_failure(Path(hc.runtime.output_dir), ex, list(hc.overrides.task))
            return math.nan

    return job


def record_failure(job_dir: Path, ex: Exception, overrides: list[str]) -> None:
    log.error("job failed: %s\n%s", job_dir, "".join(traceback.format_exception(ex)))
    payload = {
        "error": f"{type(ex).__name__}: {ex}".splitlines()[0],
        "overrides": overrides,
        "traceback": "".join(traceback.format_exception(ex)),
    }
    (job_dir / FAILED).write_text(json.dumps(payload, indent=2) + "\n")


def submitit_problems(launcher: Any) -> list[str]:
    """What is wrong with a submitit sweep's settings (hydra.launcher), one line each."""
    problems = [
        f"hydra.launcher.{key}={launcher[key]}: each task of a job would train the whole job into the same "
        "directory; fix: keep nodes=1 and tasks_per_node=1, and give a job several GPUs with "
        "hydra.launcher.gpus_per_node=N distributed=ddp (it launches one process per GPU); across machines, "
        "run python -m rlhf distributed.num_machines=... on each (README: Several processes)"
        for key in ("nodes", "tasks_per_node")
        if launcher.get(key) not in (None, 1)
    ]
    if str(launcher.get("_target_")).endswith("SlurmLauncher") and shutil.which("srun") is None:
        problems.append(
            "hydra/launcher=slurm: this machine has no srun (submitit submits with sbatch and srun); fix: run "
            "the sweep on a machine of the Slurm cluster, or try it here with hydra/launcher=submitit-local"
        )
    return problems


class SubmititChecks(Callback):
    """Hydra callback (conf/config.yaml, hydra.callbacks): a submitit sweep's settings, checked before it
    submits anything or writes its directory; bad ones end with one line each and exit 2 (an exception in a
    callback would only be a warning to Hydra)."""

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        launcher = config.hydra.launcher
        problems = submitit_problems(launcher) if "submitit" in str(launcher.get("_target_")) else []
        if problems:
            print_errors(problems)
            sys.exit(EXIT_CODE)


class FailedJobs(Callback):
    """Hydra callback (conf/config.yaml, hydra.callbacks): at the end of a sweep, list failed jobs; exit 1."""

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        sweep = Path(config.hydra.sweep.dir)
        jobs = sorted(p.parent for p in sweep.rglob(".hydra"))
        failed = [job for job in jobs if (job / FAILED).is_file()]
        offline = any(sweep.rglob("offline-run-*"))
        print(f"\nsweep {sweep}: {len(jobs) - len(failed)} of {len(jobs)} jobs finished")
        if offline:
            print(f"wandb: upload its runs with: wandb sync {sweep}/*/wandb/offline-run-*")
        if not failed:
            return
        print(f"{len(failed)} failed (the traceback is in each job's {FAILED}):", file=sys.stderr)
        for job in failed:
            print(f"  {job}: {json.loads((job / FAILED).read_text())['error']}", file=sys.stderr)
        sys.exit(1)


def objective(summary: dict[str, Any], name: str) -> float:
    """summary[name] as a float for a sweeper; `eval.task/acc` is key `task/acc` of the dict summary["eval"]."""
    values = numbers(summary)
    if name not in values:
        raise UserError(
            f"optimize_metric={name}: not a number in summary.json; fix: choose one of: {', '.join(values)}"
        )
    # a key without a value (no loss was logged) is a failed trial for optuna, not a crash of the sweep
    return math.nan if values[name] is None else float(values[name])


def numbers(summary: dict[str, Any]) -> dict[str, Any]:
    """The numeric entries of summary.json by the names optimize_metric takes: key, or key.nested_key."""
    flat: dict[str, Any] = {}
    for key, value in summary.items():
        if isinstance(value, dict):
            flat.update({f"{key}.{sub}": v for sub, v in tracking.flatten_nested(value).items()})
        else:
            flat[key] = value
    return {
        k: v
        for k, v in flat.items()
        if v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))
    }

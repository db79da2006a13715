"""`python -m rlhf resume=<run dir> [overrides]`: the command line that continues a run as it was started.

The run's own overrides (.hydra/overrides.yaml) are used again, so it composes the same config; a new
override may only change what cannot change the result: a larger method.max_steps, the logger, the
checkpoint settings, the cache. Anything else (model, method, data, batch, seed, ...) is refused.
`resume=auto` with an explicit hydra.run.dir resumes a run there if it has a checkpoint, else starts one.
`python -m rlhf -m <the sweep's overrides> resume=<multirun dir>` resumes a sweep job by job.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from rlhf.errors import UserError

# overrides a resume may change (key prefixes): none of them changes what the steps already trained compute
MAY_CHANGE = ("method.max_steps", "logger", "checkpoint.", "cache_dir", "hydra.job_logging", "hydra.verbose")


def key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def argv_for(argv: list[str]) -> list[str] | None:
    """argv with resume=<dir> replaced by the run's own overrides, the allowed new ones and its directory;
    None for a finished run with nothing left to train (it is said so, and nothing is touched)."""
    given = [a.split("=", 1)[1] for a in argv if a.startswith("resume=")]
    multirun = any(a in ("-m", "--multirun") for a in argv)
    if not given or given[-1] in ("", "auto"):
        if (
            given
            and given[-1] == "auto"
            and not multirun
            and not any(a.startswith("hydra.run.dir=") for a in argv)
        ):
            raise UserError(
                "resume=auto: needs the run's directory; fix: pass hydra.run.dir=outputs/<name> with it"
            )
        return argv
    run = Path(given[-1]).expanduser()
    if (run / "multirun.yaml").is_file():
        return sweep_argv_for(argv, run)
    saved_file = run / ".hydra" / "overrides.yaml"
    if not saved_file.is_file():
        raise UserError(
            f"resume={given[-1]}: not a run directory (no .hydra/overrides.yaml); fix: give the directory "
            "of a run started by python -m rlhf"
        )
    saved = [
        str(o) for o in OmegaConf.load(saved_file) if not str(o).startswith(("hydra.run.dir=", "resume="))
    ]
    # a launch's processes get the directory the resume gave it (rlhf.distributed.launch)
    here = f"hydra.run.dir={run}"
    new = [a for a in argv if not a.startswith("resume=") and a != here]
    for override in new:
        if override in saved or key(override).startswith(MAY_CHANGE):
            continue
        was = next((o for o in saved if key(o) == key(override)), f"{key(override)} as composed")
        raise UserError(
            f"{override}: would change what the run trained (it ran with {was}); fix: resume with its own "
            f"settings (only {', '.join(p.rstrip('.') + '*' * p.endswith('.') for p in MAY_CHANGE[:4])} "
            "may change), or start a new run"
        )
    if finished(run, new):
        return None
    changed = {key(o) for o in new}
    kept = [o for o in saved if key(o) not in changed]
    return [*kept, *new, f"hydra.run.dir={run}", f"resume={run}"]


def sweep_argv_for(argv: list[str], sweep_dir: Path) -> list[str]:
    """`-m ... resume=<multirun dir>`: the same sweep into the same directory, each job with resume=auto:
    a finished job is skipped, an interrupted one continues from its checkpoint, one that never started
    (or left no checkpoint) runs afresh."""
    planned = [
        str(o)
        for o in OmegaConf.load(sweep_dir / "multirun.yaml").hydra.overrides.task
        if key(str(o)) != "resume"
    ]
    given = [a for a in argv if not a.startswith(("resume=", "-"))]
    if not any(a in ("-m", "--multirun") for a in argv):
        raise UserError(f"resume={sweep_dir}: a multirun directory; fix: resume it with -m and its overrides")

    def result_changing(overrides: list[str]) -> list[str]:
        return sorted(o for o in overrides if not key(o).startswith((*MAY_CHANGE, "hydra.")))

    if result_changing(given) != result_changing(planned):
        raise UserError(
            f"resume={sweep_dir}: the sweep ran with {' '.join(planned)}; fix: resume it with the same "
            f"overrides: python -m rlhf -m {' '.join(planned)} resume={sweep_dir}"
        )
    return [*[a for a in argv if not a.startswith("resume=")], f"hydra.sweep.dir={sweep_dir}", "resume=auto"]


def finished(run: Path, new: list[str]) -> bool:
    """A finished run (summary.json) trains on only with a larger method.max_steps than its last checkpoint."""
    from rlhf import checkpoint

    if not (run / "summary.json").is_file():
        return False
    last = checkpoint.latest(run)
    steps = [int(o.split("=", 1)[1]) for o in new if key(o) == "method.max_steps"]
    if last is not None and steps and steps[-1] > checkpoint.step_of(last):
        return False
    print(
        f"resume={run}: the run is finished (summary.json); nothing to resume "
        "(with a larger method.max_steps it trains on from its last checkpoint)"
    )
    return True

"""logger=wandb: one wandb run per job, inside the job's directory (`<run_dir>/wandb/`).

The run is offline unless an API key is configured (WANDB_API_KEY, or a netrc entry for the wandb host) or
`logger.mode=online`; `wandb sync <dir>` uploads an offline run later. Only rank 0 calls `start`, and wandb
is imported there: `logger=none`, `--cfg job` and the other ranks never import it.

Metrics take one path for every method: `metrics.MetricsFile` (the sink that writes metrics.jsonl,
fed by TRL's trainers through a callback and by our PPO loop directly) forwards each row to `Tracker.log`, so wandb holds exactly
the rows of metrics.jsonl, at the same steps, for TRL's trainers and our PPO alike. The trainers keep
`report_to=[]`: transformers' WandbCallback would log the same values again under other names (train/...),
for the TRL methods only, and add every TrainingArguments field to the run's config.
"""

from __future__ import annotations

import netrc
import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

# a config key whose name has one of these words is never sent: keys, tokens, passwords
SECRET_WORDS = {"key", "apikey", "token", "secret", "password", "passwd", "credential", "credentials", "auth"}


def has_api_key() -> bool:
    """An API key wandb would find: WANDB_API_KEY, or a netrc entry for the wandb host (as `wandb login` writes)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlsplit(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).netloc
    try:
        entry = netrc.netrc(os.environ.get("NETRC") or None).authenticators(host)
    except (OSError, netrc.NetrcParseError):  # no netrc file, or one wandb could not read either
        return False
    return bool(entry and entry[2])


def resolve_mode(mode: str) -> str:
    """auto -> WANDB_MODE where the user set it, else online with an API key and offline without one."""
    if mode != "auto":
        return mode
    return os.environ.get("WANDB_MODE") or ("online" if has_api_key() else "offline")


def is_secret(name: str) -> bool:
    return bool(SECRET_WORDS & set(re.split(r"[^a-z0-9]+", str(name).lower())))


def public_config(node: Any) -> Any:
    """The resolved config without any key that looks like a secret, nor any value an environment secret holds."""
    env_secrets = [v for k, v in os.environ.items() if is_secret(k) and len(v) >= 8]

    def clean(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items() if not is_secret(k) and not leaks(v)}
        if isinstance(value, list):
            return [clean(v) for v in value if not leaks(v)]
        return value

    def leaks(value: Any) -> bool:
        return isinstance(value, str) and any(s in value for s in env_secrets)

    return clean(node)


def flatten_nested(summary: dict[str, Any], sep: str = "/") -> dict[str, Any]:
    """{"eval": {"task/acc": 0.5}} -> {"eval/task/acc": 0.5}; None values are left out."""
    flat: dict[str, Any] = {}
    for key, value in summary.items():
        if isinstance(value, dict):
            flat.update({f"{key}{sep}{k}": v for k, v in flatten_nested(value, sep).items()})
        elif value is not None:
            flat[key] = value
    return flat


def run_name(cfg, overrides: list[str]) -> str:
    """method-model plus the job's own overrides: what tells the runs of a sweep apart."""
    rest = [o for o in overrides if not o.startswith(("method=", "model=", "cache_dir="))]
    return " ".join([f"{cfg.method.name}-{cfg.model.name}", *rest])[:128]


def previous_run_id(run_dir: Path) -> str | None:
    """The id of the wandb run a run directory already holds (wandb/<mode>-run-<time>-<id>), if any."""
    runs = sorted((Path(run_dir) / "wandb").glob("*run-*-*"), key=lambda p: p.stat().st_mtime)
    return runs[-1].name.rsplit("-", 1)[-1] if runs else None


def start(cfg, run_dir: Path, resume: bool = False) -> Tracker:
    """The job's wandb run on rank 0 with logger=wandb; otherwise a Tracker that does nothing.

    A resumed run continues its own wandb run (the same id), so the tracker shows one curve.
    """
    from rlhf.runtime import is_main_process

    if cfg.logger.name != "wandb" or not is_main_process():
        return Tracker(None)
    import wandb
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    hc = HydraConfig.get()
    multirun = hc.mode.name == "MULTIRUN"
    previous = previous_run_id(run_dir) if resume else None
    run = wandb.init(
        id=previous,
        resume="allow" if previous else None,
        dir=run_dir,  # wandb adds wandb/ to it
        mode=resolve_mode(cfg.logger.mode),
        project=cfg.logger.project,
        entity=cfg.logger.entity,
        tags=list(cfg.logger.tags),
        name=run_name(cfg, list(hc.overrides.task)),
        group=str(hc.sweep.dir) if multirun else None,  # the sweep: every job of a multirun shares it
        job_type=cfg.method.name,
        config=public_config(OmegaConf.to_container(cfg, resolve=True)),
        # a sweep runs its jobs in one process: the previous job's run is finished, never continued
        reinit="finish_previous",
        settings=wandb.Settings(quiet=True),
    )
    return Tracker(run)


class Tracker:
    """A wandb run, or None (logger=none, ranks > 0): then every method does nothing."""

    def __init__(self, run: Any):
        self.run = run

    def log(self, row: dict[str, Any]) -> None:
        """One row of metrics.jsonl, at its trainer step (metrics.MetricsFile forwards each row here)."""
        if self.run is not None:
            self.run.log({k: v for k, v in row.items() if k != "step"}, step=row["step"])

    def pause(self) -> None:
        """A run stopped by a signal: its wandb run ends marked preempted, and its resume continues it."""
        if self.run is None:
            return
        self.run.mark_preempting()
        self.run.finish(exit_code=1)

    def finish(self, summary: dict[str, Any]) -> None:
        """summary.json into the run's summary (nested results flattened: eval/<task>/<metric>); close the run.

        Prints the command that uploads an offline run (or the online run's address).
        """
        if self.run is None:
            return
        self.run.summary.update(flatten_nested(summary))
        offline = self.run.settings.mode == "offline"
        # a resumed run has one offline directory per segment, all with the run's id: sync them together
        where = (
            f"{Path(self.run.settings.sync_dir).parent}/offline-run-*-{self.run.id}"
            if offline
            else self.run.url
        )
        self.run.finish()
        print(f"wandb: upload this run with: wandb sync {where}" if offline else f"wandb: {where}")


def abort() -> None:
    """Finish the wandb run of a job that raised, marked failed (the next job of a sweep starts its own)."""
    import sys

    wandb = sys.modules.get("wandb")  # never imported: no run to finish
    if wandb is not None and wandb.run is not None:
        wandb.run.finish(exit_code=1)

"""Pipelines: stages (synth and training runs) in order, each a normal run directory under the pipeline's
directory, a later stage reading an earlier one's output through `${stage:NAME}` (its directory).

`python -m rlhf.pipeline pipeline=<name> [common=[...]]` (pipeline/__main__.py) composes conf/pipelines.yaml.
Each stage runs as its own process (`python -m rlhf` or `python -m rlhf.synth`): a stage's memory is
returned before the next loads its model, and a stage runs exactly as the same command typed by hand
would. Running the pipeline again skips the stages that finished and resumes the one that was
interrupted from its last checkpoint (training: `resume=auto`; synth: `resume=<its directory>`). The end
is `python -m rlhf.compare` over the training stages, written into the pipeline's directory.
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from rlhf.errors import UserError

RUNS = ("train", "synth")


@dataclass
class Stage:
    name: str
    run: str
    dir: Path
    overrides: list[str]

    @property
    def finished(self) -> bool:
        """A training run writes summary.json last; a synth run writes card.md last."""
        return (self.dir / ("summary.json" if self.run == "train" else "card.md")).is_file()

    def command(self) -> list[str]:
        module = "rlhf" if self.run == "train" else "rlhf.synth"
        if self.run == "train":  # resume=auto: continue from a checkpoint there, or start afresh
            where = [f"hydra.run.dir={self.dir}", "resume=auto"]
        elif self.dir.is_dir():  # an interrupted synth run continues with its own settings
            return [sys.executable, "-m", module, f"resume={self.dir}"]
        else:
            where = [f"hydra.run.dir={self.dir}"]
        return [sys.executable, "-m", module, *self.overrides, *where]


def stages(cfg: DictConfig) -> list[Stage]:
    """The pipeline's stages, with `${stage:NAME}` resolved to the directories of the stages before it."""
    root = Path(cfg.dir).expanduser()
    seen: list[str] = []
    out = []

    unknown: list[str] = []

    def stage_dir(name: str) -> str:  # an error raised here would reach the user wrapped by OmegaConf's
        if name not in seen:
            unknown.append(
                f"${{stage:{name}}}: no stage {name} before this one (stages so far: "
                f"{', '.join(seen) or 'none'}); fix: name an earlier stage"
            )
        return str(root / name)

    OmegaConf.register_new_resolver("stage", stage_dir, replace=True)
    for i, node in enumerate(cfg.pipeline.stages):
        where = f"pipeline.stages[{i}]"
        if node.run not in RUNS:
            raise UserError(f"{where}.run={node.run}: unknown value; fix: choose one of: {', '.join(RUNS)}")
        if node.name in seen:
            raise UserError(f"{where}.name={node.name}: two stages of that name; fix: give each its own name")
        # resolves ${stage:...} here, in order; the common overrides last: they win (common=[method.max_steps=2])
        overrides = [*[str(o) for o in node.overrides], *cfg.common]
        if unknown:
            raise UserError(unknown[0])
        out.append(Stage(node.name, node.run, root / node.name, overrides))
        seen.append(node.name)
    unknown = [n for n in cfg.pipeline.compare if n not in seen]
    if unknown:
        raise UserError(
            f"pipeline.compare={list(cfg.pipeline.compare)}: {unknown[0]} is not a stage; fix: name stages "
            f"of the pipeline ({', '.join(seen)})"
        )
    return out


def run(cfg: DictConfig) -> Path:
    """Every stage in order (finished ones skipped), then the comparison report; returns the directory."""
    plan = stages(cfg)
    root = Path(cfg.dir).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    print(f"pipeline {cfg.pipeline.name}: {len(plan)} stages in {root}")
    timings = []
    for i, stage in enumerate(plan, start=1):
        head = f"[{i}/{len(plan)}] {stage.name} ({stage.run})"
        if stage.finished:
            print(f"{head}: finished before, skipped")
            timings.append((stage, "skipped", 0.0))
            continue
        state = "resumed" if stage.dir.is_dir() else "started"
        command = stage.command()
        print(f"{head}: {state}: {' '.join(command[1:])}", flush=True)
        started = time.time()
        done = subprocess.run(command)
        if done.returncode != 0 or not stage.finished:
            again = f"python -m {' '.join(sys.argv[1:]) and 'rlhf.pipeline ' + ' '.join(sys.argv[1:])}"
            raise SystemExit(
                f"{head}: ended with exit status {done.returncode} before finishing; its directory is "
                f"{stage.dir}; run the pipeline again to resume it ({again.strip()})"
            )
        timings.append((stage, state, time.time() - started))
    report(cfg, plan, root)
    print(f"\npipeline {cfg.pipeline.name}: done in {root}")
    for stage, state, seconds in timings:
        print(f"  {stage.name:<16} {stage.run:<6} {state:<8} {seconds:7.0f} s  {stage.dir}")
    return root


def report(cfg: DictConfig, plan: list[Stage], root: Path) -> None:
    """`python -m rlhf.compare` over the training stages (or pipeline.compare's), into the pipeline's
    directory."""
    names = list(cfg.pipeline.compare) or [s.name for s in plan if s.run == "train"]
    dirs = [str(s.dir) for s in plan if s.name in names and s.run == "train"]
    if dirs:
        subprocess.run([sys.executable, "-m", "rlhf.compare", *dirs, "--out", str(root)], check=True)

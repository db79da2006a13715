"""Checkpoints of a run: `<run>/checkpoints/step-N/`, and the signals that stop a run at a step boundary.

A checkpoint is written under a temporary name (by the trainer, or by our PPO loop), renamed to `step-N`
when it is whole, and marked complete last: a directory without the marker (a run killed while saving) is
never resumed from. The newest `keep` complete checkpoints stay.

SIGINT and SIGTERM (a scheduler's preemption) ask the run to finish its current step, save a checkpoint and
stop; a second signal stops at once. The same signal again within REPEAT_S of the first is that one delivered
twice, not a second request: a scheduler (Slurm) signals every process of a job, and a launcher passes the
signal on to its processes as well.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

MARKER = "complete.json"
INTERRUPTED = "interrupted.json"  # a run stopped by a signal: its step and the command that resumes it
# seconds within which the first stop signal arriving again counts as the same signal delivered twice
REPEAT_S = 2.0
STEP = re.compile(r"^step-(\d+)$")


def root(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def incoming(run_dir: Path) -> Path:
    """Where a trainer writes a checkpoint before it is published (the trainer's output_dir)."""
    return root(run_dir) / ".incoming"


def complete(run_dir: Path) -> list[Path]:
    """The complete checkpoints of a run, oldest first."""
    found = [
        (int(m.group(1)), p)
        for p in (root(run_dir).iterdir() if root(run_dir).is_dir() else [])
        if (m := STEP.match(p.name)) and (p / MARKER).is_file()
    ]
    return [p for _, p in sorted(found)]


def latest(run_dir: Path) -> Path | None:
    done = complete(run_dir)
    return done[-1] if done else None


def step_of(checkpoint: Path) -> int:
    return int(STEP.match(checkpoint.name).group(1))


def publish(written: Path, run_dir: Path, step: int, keep: int, extra: dict | None = None) -> Path:
    """Rename a whole checkpoint directory to step-N, mark it complete, and keep only the newest `keep`."""
    target = root(run_dir) / f"step-{step}"
    # transformers pickles its TrainingArguments beside the weights; nothing reads it back, and a pickle
    # runs code when loaded: it goes. The optimizer, scheduler and RNG states load with weights_only=True.
    (written / "training_args.bin").unlink(missing_ok=True)
    if target.exists():  # an incomplete one of the same step, left by a run killed while saving
        shutil.rmtree(target)
    written.rename(target)
    marker = {"step": step, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **(extra or {})}
    tmp = target / f".{MARKER}"
    tmp.write_text(json.dumps(marker, indent=2) + "\n")
    tmp.replace(target / MARKER)  # last: the checkpoint is whole
    for old in complete(run_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old)
    return target


def every_rank_here() -> None:
    """Wait until every process of a launch reaches this point (a barrier); with one process, nothing."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


@dataclass
class Saves:
    """How many checkpoints a run wrote and the seconds they took (for summary.json)."""

    count: int = 0
    seconds: float = 0.0
    steps: list[int] = field(default_factory=list)

    def add(self, step: int, seconds: float) -> None:
        self.count += 1
        self.seconds += seconds
        self.steps.append(step)

    @classmethod
    def before(cls, checkpoint: Path | None) -> Saves:
        """The saves a run made up to a checkpoint (its marker counts them): a resumed run counts on."""
        if checkpoint is None:
            return cls()
        marker = json.loads((checkpoint / MARKER).read_text())
        return cls(marker.get("checkpoints_written", 0), marker.get("checkpoint_seconds", 0.0))


@dataclass
class Plan:
    """What a method needs to checkpoint and resume: how often, how many to keep, where, the checkpoint to
    continue from, the stop request, and a record of the saves."""

    run_dir: Path
    every: int  # 0: none while training
    keep: int
    at_end: bool
    resume_from: Path | None = None
    stop: StopRequest | None = None
    saves: Saves = field(default_factory=Saves)
    boundary: int = 1  # steps a method's state spans (GRPO with num_iterations: one generation's updates)
    wanted: bool = False  # a monitor rule asks for a checkpoint at the next step boundary
    halt: str | None = None  # a monitor rule's stop: the reason; the run ends cleanly at the next boundary

    def publish(self, written: Path, step: int, started: float) -> Path:
        """A whole checkpoint written since `started`: counted, then published as step-N."""
        self.saves.add(step, time.time() - started)
        self.wanted = False
        extra = {"checkpoints_written": self.saves.count, "checkpoint_seconds": round(self.saves.seconds, 3)}
        return publish(written, self.run_dir, step, self.keep, extra)

    def due(self, step: int, last: bool) -> bool:
        """Whether the step just finished gets a checkpoint."""
        if step % self.boundary and not last:  # mid-way through state no checkpoint holds
            return False
        return (
            (self.every > 0 and step % self.every == 0)
            or self.stopping
            or self.wanted
            or self.halt is not None
            or (last and self.at_end)
        )

    def ends_here(self, step: int) -> bool:
        """Whether training ends after the step just finished: a signal or a monitor's stop, at a boundary."""
        return (self.stopping or self.halt is not None) and step % self.boundary == 0

    def agree(self) -> None:
        """Under several processes, make every rank take the same decision at this step boundary: a
        checkpoint, a monitor's stop or a signal that any one rank has is taken by all of them.

        Each rank's monitor sees its own logs (our PPO's rollout statistics differ per rank; a TRL trainer
        logs on rank 0 only) and a scheduler may signal one process: a rank that stopped alone would leave the
        others in mismatched collectives (seen: a 2-process gloo run died with SIGABRT). Every rank must call
        this at the same points (one small all-reduce); with one process it does nothing.
        """
        import torch
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
        own = [int(self.wanted), int(self.halt is not None), (self.stop.signal or 0) if self.stop else 0]
        flags = torch.tensor(own, dtype=torch.int64, device=device)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        wanted, halt, signum = (int(v) for v in flags.tolist())
        self.wanted = bool(wanted)
        if halt and self.halt is None:
            self.halt = "a monitor rule's stop on another process (that process's log has the rule)"
        if signum and self.stop is not None and self.stop.signal is None:
            self.stop.signal = signum  # stop, checkpoint and exit as the signalled process does

    @property
    def stopping(self) -> bool:
        """A signal asked the run to stop (it exits 128 + n, to be resumed); a monitor's stop is `halt`."""
        return self.stop is not None and self.stop.requested


class FirstSignal:
    """The first stop signal a process got, to tell a second request from the first one delivered twice."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._at = 0.0

    def take(self, signum: int) -> None:
        self.signal, self._at = signum, time.monotonic()

    def repeats(self, signum: int) -> bool:
        """Whether `signum` is the first signal again within REPEAT_S (a scheduler's and a launcher's copy)."""
        return signum == self.signal and time.monotonic() - self._at < REPEAT_S


class StopRequest:
    """The first SIGINT / SIGTERM (or one of `extra`) sets `signal` (the run stops at its next step boundary, after a checkpoint);
    a second one of either stops the process at once, as if no handler were installed (the first again within
    REPEAT_S is not a second one)."""

    def __init__(self, extra: tuple[int, ...] = ()) -> None:
        self._first = FirstSignal()
        self.signals = (signal.SIGINT, signal.SIGTERM, *extra)  # extra: a scheduler's warning (rlhf.sweep)
        # the handlers installed before: restored by uninstall, and a stop may hand its signal back to one
        self.handed_over: dict[int, object] = {}

    @property
    def signal(self) -> int | None:
        return self._first.signal

    @signal.setter
    def signal(self, signum: int | None) -> None:  # Plan.agree: another rank's signal
        self._first.take(signum)

    def install(self) -> StopRequest:
        self.handed_over = {sig: signal.signal(sig, self._handle) for sig in self.signals}
        return self

    def uninstall(self) -> None:
        for sig, handler in self.handed_over.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame) -> None:
        if self._first.repeats(signum):
            return
        if self.signal is not None:  # the second signal: stop now
            self.uninstall()
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.signal = signum
        name = signal.Signals(signum).name
        print(
            f"\n{name}: finishing this step, saving a checkpoint, then stopping (again: stop at once)",
            flush=True,
        )

    @property
    def requested(self) -> bool:
        return self.signal is not None

"""The generation loop that survives: batches, a state file to resume from, stalls retried smaller, a stop
at a batch boundary.

- Batch b holds the candidates [b * batch_size, (b + 1) * batch_size); everything random in it (the
  generator's sampling, a mode's choices) is seeded from (seed, b), so a batch made again samples the same
  rows and a resumed run writes what an uninterrupted one writes, byte for byte.
- Kept rows are appended to data.jsonl, dropped ones to rejected.jsonl; every `checkpoint_every` candidates
  both are flushed and state.json (what is done: the next batch, counts, file sizes, the batch size) is
  replaced atomically. A resume cuts both files back to the sizes state.json recorded (rows written after
  it are made again) and refills the filters' pools from data.jsonl: no duplicate, no gap.
- Each generate call runs in a worker thread that reports every decoding step; a batch whose generation
  makes no progress for `stall_s` seconds is abandoned and made again at half the size (down to 1), and
  the smaller size stays for the rest of the run (seed 004's batched generation hung; one at a time did
  not). The retries are counted in state.json and stats.json.
- SIGINT / SIGTERM (rlhf.checkpoint.StopRequest) end the run after the batch in flight.
"""

from __future__ import annotations

import json
import os
import random
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from rlhf.checkpoint import StopRequest
from rlhf.errors import UserError
from rlhf.synth.backends import Heartbeat, Sampling
from rlhf.synth.filters import Candidate, Pipeline, rejection

STATE, DATA, REJECTED = "state.json", "data.jsonl", "rejected.jsonl"


class Stalled(Exception):
    """A generate call made no progress for stall_s seconds."""


class Job(Protocol):
    """What a synth mode (rlhf/synth/<mode>.py) gives the loop."""

    FIELDS: tuple[str, ...]
    total: int  # candidates in the run

    def batch(self, ids: range, batch: Batch) -> list[Candidate]: ...  # the kept candidates, rows made
    def keep(self, kept: list[Candidate]) -> None: ...  # a batch's kept rows, once it is done
    def restore(self, rows: list[dict]) -> None: ...  # a resumed run's rows so far
    def texts_of(self, row: dict) -> dict[str, list[str]]: ...  # a row's texts per field (the pools')
    def initial_texts(self) -> list[dict[str, list[str]]]: ...  # what the pools start with


@dataclass
class State:
    """state.json: everything a resumed run needs to continue where this one stopped."""

    mode: str
    seed: int
    total: int
    batch_size: int
    chunk: int  # the size batches are generated at: batch_size, halved after each stall
    next_batch: int = 0
    done: int = 0  # candidates finished (kept or dropped)
    kept: int = 0
    rejected: int = 0
    data_bytes: int = 0  # data.jsonl and rejected.jsonl as of this state: a resume cuts them back to it
    rejected_bytes: int = 0
    retries: int = 0
    stalls: list[dict] = field(default_factory=list)  # {batch, batch_size} of each abandoned attempt
    dropped: dict[str, int] = field(default_factory=dict)  # filter label -> rows it dropped
    stages: dict[str, dict[str, int]] = field(default_factory=dict)  # field -> {in, out} of its filters
    seconds: float = 0.0  # time spent in batches, over every segment of the run
    segments: int = 1  # 1 + the times it was resumed
    last_batch_seed: int | None = None
    stopped_by: str | None = None

    def save(self, run_dir: Path) -> None:
        tmp = run_dir / f".{STATE}"
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        tmp.replace(run_dir / STATE)  # atomic: a kill leaves the old state or the new one, never half

    @classmethod
    def load(cls, run_dir: Path) -> State:
        return cls(**json.loads((run_dir / STATE).read_text()))


def derive(*parts: int) -> int:
    """A seed from (run seed, batch, call, offset): numpy's SeedSequence mixes them into one 31-bit int."""
    import numpy as np

    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0] >> 1)


def watched(work: Callable[[Heartbeat], Any], stall_s: float) -> Any:
    """work(heartbeat) in a worker thread; Stalled when the heartbeat is quiet for stall_s seconds."""
    heartbeat = Heartbeat()
    box: dict[str, Any] = {}
    done = threading.Event()

    def target() -> None:
        try:
            box["value"] = work(heartbeat)
        except BaseException as e:  # handed to the waiting thread, which raises it
            box["error"] = e
        finally:
            done.set()

    # A daemon thread: Python cannot kill a thread, and a generate call that never returns must not keep
    # the process alive at exit. An abandoned call that is only slow stops at its next decoding step
    # (heartbeat.abandoned); one that hangs stays parked, and whatever it returns is never read.
    threading.Thread(target=target, daemon=True, name="synth-generate").start()
    while not done.wait(0.1):  # short waits: a signal's handler runs between them
        if time.monotonic() - heartbeat.last > stall_s:
            heartbeat.abandoned = True
            raise Stalled
    if "error" in box:
        raise box["error"]
    return box["value"]


class Batch:
    """What a mode's batch sees: seeded generation (in chunks, watched for stalls), its own RNG, the filters,
    and the counts and rejected rows it adds up (discarded if the batch is abandoned)."""

    def __init__(
        self, index: int, seed: int, backend: Any, pipeline: Pipeline, chunk: int, stall_s: float
    ) -> None:
        self.index, self.seed, self.chunk, self.stall_s = index, seed, chunk, stall_s
        self.backend, self.pipeline = backend, pipeline
        self.rng = random.Random(seed)  # a mode's choices (demonstrations, random_lower)
        self.dropped: Counter[str] = Counter()
        self.rejected: list[dict] = []
        self.stages: dict[str, Counter[str]] = {}
        self.calls = 0

    def generate(self, prompts: list[str], sampling: Sampling) -> list[str]:
        call, self.calls = self.calls, self.calls + 1
        out: list[str] = []
        for start in range(0, len(prompts), self.chunk):
            part, seed = prompts[start : start + self.chunk], derive(self.seed, call, start)
            out += watched(
                lambda beat, p=part, s=seed: self.backend.generate(p, sampling, s, beat), self.stall_s
            )
        return out

    def filter(self, candidates: list[Candidate], on: str) -> list[Candidate]:
        """The candidates the filters reading `on` keep; counted as that stage's in and out."""
        counts = self.stages.setdefault(on, Counter())
        counts["in"] += len(candidates)
        kept = self.pipeline.apply(candidates, on, self.dropped, self.rejected)
        counts["out"] += len(kept)
        return kept

    def drop(self, candidate: Candidate, by: str, why: str) -> None:
        """A candidate a mode drops itself (nothing generated, unparsable, a tie): counted under `by`."""
        self.dropped[by] += 1
        self.rejected.append(rejection(candidate, by, why))


def run(
    job: Job,
    pipeline: Pipeline,
    backend: Any,
    settings: Any,
    seed: int,
    run_dir: Path,
    resume: bool,
    stop: StopRequest,
) -> State:
    """Every batch of `job` not done yet, into run_dir; returns the final state (stopped_by set when a
    signal ended it early)."""
    from tqdm.auto import tqdm

    data_file, rejected_file = run_dir / DATA, run_dir / REJECTED
    if resume:
        state = State.load(run_dir)
        for path, size in ((data_file, state.data_bytes), (rejected_file, state.rejected_bytes)):
            with path.open("r+b") as f:
                f.truncate(size)  # rows after the last state are made again
        rows = [json.loads(line) for line in data_file.read_text().splitlines()]
        pipeline.restore([*job.initial_texts(), *(job.texts_of(r) for r in rows)])
        job.restore(rows)
        state.segments += 1
        state.stopped_by = None
    else:
        state = State(settings.name, seed, job.total, settings.batch_size, settings.batch_size)
        data_file.write_text("")
        rejected_file.write_text("")
        pipeline.restore(job.initial_texts())
        state.save(run_dir)
    bar = tqdm(
        total=job.total, initial=state.done, unit="row", desc=f"synth={settings.name}", file=sys.stderr
    )
    since = 0
    with data_file.open("a") as data_out, rejected_file.open("a") as rejected_out:
        while state.done < job.total and not stop.requested:
            b = state.next_batch
            ids = range(b * state.batch_size, min(job.total, (b + 1) * state.batch_size))
            started = time.monotonic()
            kept, batch = attempt(job, pipeline, backend, settings, state, b, ids, seed, run_dir)
            for c in kept:
                data_out.write(json.dumps(c.row, ensure_ascii=False) + "\n")
            for r in batch.rejected:
                rejected_out.write(json.dumps(r, ensure_ascii=False) + "\n")
            job.keep(kept)
            state.next_batch, state.done = b + 1, state.done + len(ids)
            state.kept, state.rejected = state.kept + len(kept), state.rejected + len(batch.rejected)
            for name, n in batch.dropped.items():
                state.dropped[name] = state.dropped.get(name, 0) + n
            for on, counts in batch.stages.items():
                stage = state.stages.setdefault(on, {"in": 0, "out": 0})
                stage["in"], stage["out"] = stage["in"] + counts["in"], stage["out"] + counts["out"]
            state.last_batch_seed = batch.seed
            state.seconds += time.monotonic() - started
            since += len(ids)
            if since >= settings.checkpoint_every or state.done >= job.total or stop.requested:
                checkpoint(state, data_out, rejected_out, run_dir)
                since = 0
            bar.set_postfix(kept=state.kept, dropped=state.done - state.kept, refresh=False)
            bar.update(len(ids))
        checkpoint(state, data_out, rejected_out, run_dir)
    bar.close()
    return state


def attempt(
    job: Job,
    pipeline: Pipeline,
    backend: Any,
    settings: Any,
    state: State,
    b: int,
    ids: range,
    seed: int,
    run_dir: Path,
) -> tuple[list[Candidate], Batch]:
    """Batch b, made again at half the size each time it stalls."""
    while True:
        batch = Batch(b, derive(seed, b), backend, pipeline, min(state.chunk, len(ids)), settings.stall_s)
        try:
            kept = job.batch(ids, batch)
        except Stalled:
            pipeline.settle(set())  # nothing of the abandoned attempt stays in the pools
            state.retries += 1
            state.stalls.append({"batch": b, "batch_size": batch.chunk})
            if batch.chunk == 1:
                state.save(run_dir)
                raise UserError(
                    f"synth.stall_s={settings.stall_s}: batch {b} made no progress for that long even one "
                    f"row at a time; fix: raise synth.stall_s, or check the generator, then resume: "
                    f"python -m rlhf.synth resume={run_dir}"
                ) from None
            state.chunk = max(1, batch.chunk // 2)
            print(
                f"\nbatch {b}: no progress for {settings.stall_s:g} s at batch size {batch.chunk}; "
                f"retrying at {state.chunk}",
                file=sys.stderr,
                flush=True,
            )
            continue
        pipeline.settle({c.id for c in kept})
        return kept, batch


def checkpoint(state: State, data_out: Any, rejected_out: Any, run_dir: Path) -> None:
    """data.jsonl and rejected.jsonl flushed, then state.json naming their sizes."""
    for f in (data_out, rejected_out):
        f.flush()
        os.fsync(f.fileno())
    state.data_bytes, state.rejected_bytes = data_out.tell(), rejected_out.tell()
    state.save(run_dir)

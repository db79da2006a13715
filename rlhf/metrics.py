"""metrics.jsonl: every value a method logs, one JSON object per line, as it happens.

`MetricsFile` is the metrics sink every method writes to (TRL's trainers through a callback, our PPO loop
directly); it forwards each row to the experiment tracker (rlhf.tracking), so the tracker holds exactly
the rows of metrics.jsonl, at the same steps.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rlhf.runtime import is_main_process


class MetricsFile:
    """`keep_until`: a resumed run keeps the rows of the steps its checkpoint covers (and drops those it will
    train again); a new run starts with none."""

    def __init__(
        self, path: Path, forward: Callable[[dict[str, Any]], None] | None = None, keep_until: int = 0
    ):
        self.path = path
        self.forward = forward
        self.rows: list[dict[str, Any]] = []
        if path.is_file() and is_main_process():
            rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            self.rows = [r for r in rows if r["step"] <= keep_until]
            path.write_text("".join(json.dumps(r) + "\n" for r in self.rows))

    def write(self, step: int, epoch: float, values: dict[str, Any]) -> None:
        """One row (rank 0 only): the step, the epoch and the logged values."""
        if not values or not is_main_process():
            return
        row = {"step": step, "epoch": round(epoch or 0.0, 4), **values}
        self.rows.append(row)
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self.forward:
            self.forward(row)

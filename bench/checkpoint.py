"""Checkpoints of the embedded model: size and save time for LoRA and for full fine-tuning, and the share
of a default run's wall time spent saving them (target: under 3% with the cpu profile's checkpoint_every).

    .venv/bin/python bench/checkpoint.py          (make bench-checkpoint; about 6 minutes on 2 cores)

Each run is a real `python -m rlhf` in its own directory; the figures come from its summary.json
(checkpoints_written, checkpoint_seconds, wall_time_s) and the size of its newest checkpoint on disk.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNS = {  # name -> overrides
    "lora (default method), 10 steps, every 5": ["method.max_steps=10", "checkpoint.every=5", "eval=none"],
    "sft (full fine-tuning), 4 steps, every 2": [
        "method=sft",
        "method.max_steps=4",
        "checkpoint.every=2",
        "eval=none",
    ],
    "default run (python -m rlhf)": [],
}


def size_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def main() -> None:
    base = Path(tempfile.mkdtemp(prefix="rlhf-bench-checkpoint-"))
    rows = []
    for i, (name, overrides) in enumerate(RUNS.items()):
        run_dir = base / str(i)
        cmd = [sys.executable, "-m", "rlhf", *overrides, "logger=none", f"hydra.run.dir={run_dir}"]
        subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        summary = json.loads((run_dir / "summary.json").read_text())
        newest = max((run_dir / "checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
        count, seconds = summary["checkpoints_written"], summary["checkpoint_seconds"]
        rows.append((name, size_mb(newest), count, seconds / max(count, 1), seconds / summary["wall_time_s"]))
    print(f"\n{'run':<44} {'size MB':>8} {'saves':>6} {'s/save':>7} {'share of wall':>14}")
    for name, mb, count, per, share in rows:
        print(f"{name:<44} {mb:>8.1f} {count:>6} {per:>7.2f} {share:>13.2%}")


if __name__ == "__main__":
    main()

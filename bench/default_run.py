"""Wall time of the default experiment (`python -m rlhf`, no overrides) and what its summary reports.

.venv/bin/python bench/default_run.py [extra overrides...]
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUDGET_S = 300


def main() -> None:
    run_dir = Path(tempfile.mkdtemp(prefix="rlhf-default-")) / "run"
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "rlhf", f"hydra.run.dir={run_dir}", *sys.argv[1:]], cwd=ROOT, check=True
    )
    wall = time.perf_counter() - start
    summary = json.loads((run_dir / "summary.json").read_text())
    print(f"\ndefault run: {wall:.0f} s wall ({wall / BUDGET_S:.2f} of the {BUDGET_S} s budget)")
    for key in (
        "steps",
        "first_loss",
        "final_loss",
        "train_runtime_s",
        "tokens_per_s",
        "peak_rss_mb",
        "trainable_share",
    ):
        print(f"  {key:<16} {summary[key]}")
    samples = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    ending = [s for s in samples if s["stage"] == "after" and "In short:" in s["completion"]]
    before = [s for s in samples if s["stage"] == "before" and "In short:" in s["completion"]]
    print(f"  samples ending with the tuned 'In short:' line: before {len(before)}/4, after {len(ending)}/4")
    result = json.loads((run_dir / "eval.json").read_text())
    base = "read from the cache" if result["base_from_cache"] else "computed in this run"
    print(f"  eval seconds     {result['seconds']} (base model {base})")


if __name__ == "__main__":
    main()

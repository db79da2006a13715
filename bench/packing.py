"""SFT tokens/s with and without packing (data.packing=true) on the embedded model, side by side.

    .venv/bin/python bench/packing.py          (make bench-packing; about 6 minutes on 2 cores)

Each configuration trains LoRA on the same 32 rows of the shipped instruction set once (one epoch), as a
real `python -m rlhf` run; the figures come from its summary.json: tokens/s counts the rows' own tokens
(never padding), over the trainer's runtime. Runs alternate (A B C, A B C) so the CPU's speed drift over
minutes falls on every configuration alike; the table shows each configuration's mean and its two runs.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMON = ["eval=none", "logger=none", "data.eval_path=", "data.max_samples=32", "checkpoint.every=0"]
CONFIGS = {  # name -> overrides
    "rows one by one (cpu profile: batch 1)": [],
    "padded batches of 4": ["hardware.sft_batch_size=4"],
    "packed 512-token windows, batch 1": ["data.packing=true"],
    "packed 512-token windows, batch 2": ["data.packing=true", "hardware.sft_batch_size=2"],
}


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def main() -> None:
    base = Path(tempfile.mkdtemp(prefix="rlhf-bench-packing-"))
    runs: dict[str, list[dict]] = {name: [] for name in CONFIGS}
    for rep in range(2):
        for i, (name, overrides) in enumerate(CONFIGS.items()):
            run_dir = base / f"{rep}-{i}"
            cmd = [sys.executable, "-m", "rlhf", *COMMON, *overrides, f"hydra.run.dir={run_dir}"]
            subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            runs[name].append(json.loads((run_dir / "summary.json").read_text()))
    print(f"\nLoRA SFT on the embedded model, 32 rows, one epoch; {cpu_name()}, {platform.machine()}")
    print(f"{'configuration':<40} {'steps':>5} {'tokens':>7} {'tokens/s (runs)':>24} {'vs one by one':>14}")
    first = None
    for name, summaries in runs.items():
        speeds = [s["tokens_per_s"] for s in summaries]
        mean = sum(speeds) / len(speeds)
        first = first or mean
        shown = f"{mean:.0f} ({', '.join(f'{v:.0f}' for v in speeds)})"
        print(
            f"{name:<40} {summaries[0]['steps']:>5} {summaries[0]['train_tokens']:>7} {shown:>24} "
            f"{mean / first:>13.2f}x"
        )
    print(f"runs in {base}")


if __name__ == "__main__":
    main()

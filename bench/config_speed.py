"""How fast is `python -m rlhf --cfg job`? Printed as a ratio to `python -c "import hydra"` (the floor).

.venv/bin/python bench/config_speed.py [repeats]
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def wall(cmd: list[str], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 7
    rows = [
        ('python -c "import hydra"', wall([sys.executable, "-c", "import hydra"], repeats)),
        ("python -m rlhf --cfg job", wall([sys.executable, "-m", "rlhf", "--cfg", "job"], repeats)),
        ("python -m rlhf --help", wall([sys.executable, "-m", "rlhf", "--help"], repeats)),
        ('python -c "import torch"', wall([sys.executable, "-c", "import torch"], repeats)),
    ]
    floor = rows[0][1]
    print(f"median of {repeats} runs each")
    print(f"{'command':<28} {'wall s':>8} {'x import hydra':>15}")
    for name, seconds in rows:
        print(f"{name:<28} {seconds:>8.3f} {seconds / floor:>15.2f}")


if __name__ == "__main__":
    main()

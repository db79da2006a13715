"""MKL's default code path vs its AVX2 kernels (MKL_CBWR=AVX2, which rlhf.runtime.tune_blas sets on AMD CPUs).

    .venv/bin/python bench/mkl_dispatch.py [repeats]

Times the fp32 matmuls of SmolLM2-135M (hidden 576, MLP 1536, KV 192, vocabulary 49152) at the row counts
of a training step (one ~131-token row), a decode step of the sample generations (batch 4) and of the eval
(batch 40), each in fresh processes with and without the setting, alternated, and prints the medians side
by side. On an Intel CPU rlhf leaves MKL's choice alone; the figures there show what forcing AVX2 would cost.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import time, torch, torch.nn.functional as F
torch.manual_seed(0)
linears = [(576, 576), (192, 576), (192, 576), (576, 576), (1536, 576), (1536, 576), (576, 1536)]
for rows in (131, 4, 40):
    weights = [torch.randn(n, k) for _ in range(30) for n, k in linears] + [torch.randn(49152, 576)]  # 30 layers + LM head
    pairs = [(torch.randn(rows, w.shape[1]), w) for w in weights]
    for a, w in pairs:
        F.linear(a, w)
    start = time.perf_counter()
    for _ in range(3):
        for a, w in pairs:
            F.linear(a, w)
    print(rows, (time.perf_counter() - start) / 3 * 1000)
"""
LABELS = {131: "training step rows (131)", 4: "decode, batch 4", 40: "decode, batch 40"}


def run(env: dict[str, str]) -> dict[int, float]:
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, check=True)
    return {int(r): float(ms) for r, ms in (line.split() for line in out.stdout.splitlines())}


def main() -> None:
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    plain = {k: v for k, v in os.environ.items() if k != "MKL_CBWR"}
    times: dict[str, list[dict[int, float]]] = {"default": [], "AVX2": []}
    for _ in range(repeats):  # alternated: this machine's speed drifts over minutes
        times["default"].append(run(plain))
        times["AVX2"].append(run({**plain, "MKL_CBWR": "AVX2"}))
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    vendor = next((line for line in cpuinfo if line.startswith("vendor_id")), "vendor_id: ?")
    print(
        f"{vendor.split(':')[1].strip()}, {os.cpu_count()} cores; ms for the model's matmuls (30 layers + LM head), median of {repeats}"
    )
    print(f"{'':<26}{'MKL default':>12}{'MKL_CBWR=AVX2':>15}{'ratio':>8}")
    for rows, label in LABELS.items():
        default = statistics.median(t[rows] for t in times["default"])
        avx2 = statistics.median(t[rows] for t in times["AVX2"])
        print(f"{label:<26}{default:>12.1f}{avx2:>15.1f}{default / avx2:>7.2f}x")


if __name__ == "__main__":
    main()

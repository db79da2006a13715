"""LoRA SFT throughput on the embedded SmolLM2-135M, beside this machine's measured matmul peak.

    .venv/bin/python bench/lora_throughput.py [steps]

Prints tokens/s for fp32 and for bf16 autocast (the cpu profile's `precision: auto` on a CPU with bf16),
the model FLOPs each achieves (LoRA: ~4 x parameters per token -- forward 2N, backward through the
activations 2N, no weight gradients for the frozen base) as a share of the peak matmul rate of the same
dtype, measured in the same run, and peak memory.
"""

from __future__ import annotations

import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from omegaconf import OmegaConf  # noqa: E402

from rlhf import config, data, hardware, models, runtime  # noqa: E402
from rlhf.methods import Inputs, RunInfo, lora  # noqa: E402
from rlhf.metrics import MetricsFile  # noqa: E402


def matmul_peak(dtype: torch.dtype, n: int = 2048, repeats: int = 10) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9


def lora_tokens_per_s(precision: str, steps: int) -> tuple[float, int]:
    cfg = config.compose(
        [
            "hardware=cpu",
            f"hardware.precision={precision}",
            f"method.max_steps={steps}",
            "method.warmup_ratio=0",
        ]
    )
    hw = hardware.resolve(cfg.hardware)
    model, tokenizer = models.load(cfg.model, hw, cfg.cache_dir)
    params = sum(p.numel() for p in model.parameters())
    rows = data.load(cfg.data, lora.DATA_FORMATS, "lora").rows
    log = MetricsFile(Path(tempfile.mkdtemp()) / "metrics.jsonl")
    run = RunInfo(dir=Path(tempfile.mkdtemp()), seed=cfg.seed)
    inputs = Inputs(model, tokenizer, rows, OmegaConf.to_object(cfg.method), hw, run, log)
    result = lora.train(inputs)
    tokens = max(r.get("num_tokens", 0) for r in log.rows)
    return tokens / result.metrics["train_runtime"], params


def main() -> None:
    steps = int(sys.argv[1]) if len(sys.argv) > 1 else 8
    runtime.startup()  # as every entrypoint: malloc and BLAS tuning, so the figures are a run's
    torch.manual_seed(0)
    peaks = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    print(
        f"matmul peak (2048^3, {torch.get_num_threads()} threads): fp32 {peaks['fp32']:.0f} GFLOP/s, bf16 {peaks['bf16']:.0f} GFLOP/s"
    )
    print(f"{'precision':<10} {'tokens/s':>9} {'GFLOP/s':>8} {'% of peak':>10}")
    for precision in ("fp32", "bf16"):
        tps, params = lora_tokens_per_s(precision, steps)
        gflops = 4 * params * tps / 1e9
        print(f"{precision:<10} {tps:>9.1f} {gflops:>8.1f} {100 * gflops / peaks[precision]:>9.1f}%")
    print(
        f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB; {steps} steps of the cpu profile's batch"
    )


if __name__ == "__main__":
    main()

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
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rlhf import data, hardware, models, report  # noqa: E402
from rlhf.config import register_schemas  # noqa: E402
from rlhf.methods import Inputs, lora  # noqa: E402


def matmul_peak(dtype: torch.dtype, n: int = 2048, repeats: int = 10) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9


def lora_tokens_per_s(precision: str, steps: int) -> tuple[float, int]:
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            config_name="config",
            overrides=[
                "hardware=cpu",
                f"hardware.precision={precision}",
                f"method.max_steps={steps}",
                "method.warmup_ratio=0",
            ],
        )
    model, tokenizer = models.load(cfg.model, cfg.hardware, cfg.cache_dir)
    params = sum(p.numel() for p in model.parameters())
    rows = data.load(cfg.data, lora.DATA_FORMATS, "lora").rows
    log = report.MetricsFile(Path(tempfile.mkdtemp()) / "metrics.jsonl")
    args = {
        **hardware.trainer_args(cfg.hardware),
        **report.trainer_io(Path(tempfile.mkdtemp()), cfg.seed),
        "disable_tqdm": True,
    }
    result = lora.train(Inputs(model, tokenizer, rows, cfg.method, args, [log]))
    tokens = max(r.get("num_tokens", 0) for r in log.rows)
    return tokens / result.metrics["train_runtime"], params


def main() -> None:
    steps = int(sys.argv[1]) if len(sys.argv) > 1 else 8
    register_schemas()
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

"""summary.json, written last (its presence marks a finished run), and the table a run ends with."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from rlhf import methods


def peak_memory_mb() -> dict[str, float]:
    """Peak resident memory of this process, per stage where they were told apart, and peak GPU memory."""
    from rlhf.runtime import PEAKS, malloc

    peak: dict[str, Any] = {"peak_rss_mb": PEAKS.peak_mb(), "malloc": malloc()}
    if PEAKS.peaks:  # the stages told apart, and the one still running: saving, samples and the eval
        peak["peak_rss_mb_by_stage"] = {**PEAKS.peaks, "eval": round(PEAKS.high_water_mb(), 1)}
    import torch

    if torch.cuda.is_available():
        peak["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return peak


def build(
    cfg, hw, result, rows: list[dict[str, Any]], data_rows: int, started: float, scores: dict | None = None
) -> dict[str, Any]:
    """What summary.json holds: the run's settings, its loss curve's ends, speed, size, results and eval."""
    from rlhf import models

    losses = [r["loss"] for r in rows if "loss" in r]
    window = max(len(losses) // 10, 1)  # the start and end of the curve, averaged over a tenth of it
    tokens = max((r.get("num_tokens", 0) for r in rows), default=0)
    runtime = result.metrics.get("train_runtime", 0.0)
    trainable, total = models.trainable_parameters(result.model)
    return {
        "method": cfg.method.name,
        "model": cfg.model.name,
        "hardware": hw.name,
        "precision": hw.precision,
        "data": cfg.data.name,
        "data_rows": data_rows,
        "seed": cfg.seed,
        "steps": max((r["step"] for r in rows), default=0),
        "first_loss": losses[0] if losses else None,
        "final_loss": losses[-1] if losses else None,
        "loss_start_mean": sum(losses[:window]) / window if losses else None,
        "loss_end_mean": sum(losses[-window:]) / window if losses else None,
        "train_loss": result.metrics.get("train_loss"),
        "train_runtime_s": round(runtime, 2),
        "train_tokens": int(tokens),
        "tokens_per_s": round(tokens / runtime, 1) if runtime else None,
        "trainable_params": trainable,
        "total_params": total,
        "trainable_share": round(trainable / total, 6) if total else None,
        **result.extra,
        # lm-eval after training, and the change from the base model (eval.json has both sides)
        **(
            {
                "eval": scores["after"],
                "eval_delta": scores["delta"],
                "eval_significant": scores["significant"],
            }
            if scores
            else {}
        ),
        **peak_memory_mb(),
        "wall_time_s": round(time.time() - started, 1),
    }


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.write_text(json.dumps(payload, indent=2) + "\n")


def by_stage(peaks: dict[str, float] | None) -> str:
    return " (" + ", ".join(f"{k} {v:.0f}" for k, v in peaks.items()) + ")" if peaks else ""


def print_run_table(summary: dict[str, Any], run_dir: Path) -> None:
    """The table a run ends with."""

    def fmt(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        if isinstance(value, int) and value >= 10_000:
            return f"{value:,}"
        return str(value)

    share = summary["trainable_share"]
    lines = [
        ("run", f"{summary['method']} on {summary['model']} ({summary['hardware']}, {summary['precision']})"),
        ("data", f"{summary['data']} ({summary['data_rows']} rows)"),
        (
            "loss",
            f"{fmt(summary['loss_start_mean'])} -> {fmt(summary['loss_end_mean'])} over {summary['steps']} steps"
            " (means of the first and last tenth)",
        ),
        *[
            (key.replace("_", " "), fmt(summary[key]))
            for key in methods.result_keys()
            if summary.get(key) is not None
        ],
        ("trainable", f"{fmt(summary['trainable_params'])} of {fmt(summary['total_params'])} ({share:.2%})"),
        ("speed", f"{fmt(summary['tokens_per_s'])} tokens/s ({fmt(summary['train_tokens'])} tokens)"),
        (
            "peak memory",
            f"{summary['peak_rss_mb']:.0f} MB RSS"
            + by_stage(summary.get("peak_rss_mb_by_stage"))
            + (f"; malloc: {summary['malloc']}" if summary.get("malloc") else ""),
        ),
        ("wall time", f"{summary['wall_time_s']:.0f} s"),
        (
            "checkpoints",
            f"{summary.get('checkpoints_written', 0)} written ({fmt(summary.get('checkpoint_seconds', 0.0))} s)"
            + (
                f"; resumed from step {summary['resumed_from_step']}"
                if summary.get("resumed_from_step")
                else ""
            ),
        ),
        *(
            [
                (
                    "alarms",
                    "; ".join(f"{a['rule']} at step {a['step']} ({a['action']})" for a in summary["alarms"]),
                )
            ]
            if summary.get("alarms")
            else []
        ),
        *(
            [("stopped early", f"at step {stop['step']} by {stop['rule']}: {stop['reason']}")]
            if (stop := summary.get("stopped_early"))
            else []
        ),
        ("saved to", str(run_dir)),
    ]
    width = max(len(k) for k, _ in lines)
    print("\n" + "-" * 60)
    for key, value in lines:
        print(f"  {key:<{width}}  {value}")
    print("-" * 60)

"""What a run leaves behind: metrics.jsonl, samples.jsonl, plots/, summary.json, and the table at the end."""

from __future__ import annotations

import json
import os
import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from rlhf.methods import METHOD_RESULTS


def is_main_process() -> bool:
    """Rank 0 under `accelerate launch` / torchrun; the only process in a plain run."""
    return int(os.environ.get("RANK", "0")) == 0


class MetricsFile(TrainerCallback):
    """Appends every trainer log to metrics.jsonl as it happens, one JSON object per line.

    `forward` receives each row too: the experiment tracker (rlhf.tracking) sees exactly these rows.
    """

    def __init__(self, path: Path, forward: Callable[[dict[str, Any]], None] | None = None):
        self.path = path
        self.forward = forward
        self.rows: list[dict[str, Any]] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or not state.is_world_process_zero:
            return
        row = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4), **logs}
        self.rows.append(row)
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self.forward:
            self.forward(row)


@torch.no_grad()
def generate(model, tokenizer, prompts: list[list[dict]], settings) -> list[str]:
    """Greedy completions for chat prompts, in one left-padded batch (`settings` is cfg.samples)."""
    from rlhf.evaluate import lora_merged
    from rlhf.models import encode_chat_prompts

    batch = encode_chat_prompts(tokenizer, prompts, model.device)
    was_training = model.training
    model.eval()
    with lora_merged(model):  # a LoRA adapter folded in: the same function, fewer matmuls per step
        out = model.generate(
            **batch,
            max_new_tokens=settings.max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    model.train(was_training)
    return tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)


def write_samples(path: Path, stage: str, prompts: list[list[dict]], completions: list[str]) -> None:
    with path.open("a") as f:
        for prompt, completion in zip(prompts, completions, strict=True):
            row = {"stage": stage, "prompt": prompt[-1]["content"], "completion": completion}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def peak_memory_mb() -> dict[str, float]:
    """Peak resident memory of this process, and peak GPU memory where there is a GPU."""
    peak = {"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if torch.cuda.is_available():
        peak["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return peak


def plot(run_dir: Path, rows: list[dict[str, Any]], title: str) -> list[Path]:
    """plots/loss.png: training loss, rewards, KL, learning rate and gradient norm against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ("loss", "reward", "rewards/margins", "rewards/accuracies", "kl", "learning_rate", "grad_norm")
    series = [k for k in keys if any(k in r for r in rows)]
    if not series:
        return []
    cols = min(len(series), 4)
    nrows = -(-len(series) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.4 * nrows), squeeze=False)
    for ax in axes.flat[len(series) :]:
        ax.axis("off")
    for ax, key in zip(axes.flat, series, strict=False):
        steps, values = zip(*[(r["step"], r[key]) for r in rows if key in r], strict=True)
        if len(values) < 20 or key == "learning_rate":  # a schedule is not noisy: no running mean
            ax.plot(steps, values, marker="." if len(values) < 20 else None)
        else:  # per-batch values are noisy: draw them faintly under a running mean
            ax.plot(steps, values, alpha=0.3, label="per step")
            ax.plot(steps, running_mean(list(values), max(len(values) // 10, 2)), label="running mean")
            ax.legend(fontsize=7)
        ax.set_xlabel("step")
        ax.set_title(key.replace("_", " ").replace("/", ": "))
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    out = run_dir / "plots" / "loss.png"
    out.parent.mkdir(exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return [out]


def running_mean(values: list[float], window: int) -> list[float]:
    """Mean of the last `window` values at each point (fewer at the start)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v - (values[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


def trainer_io(run_dir: Path, seed: int) -> dict[str, Any]:
    """Trainer arguments owned by the run, not the profile: where it writes, what it reports, its seed."""
    return {
        "output_dir": str(run_dir),
        "save_strategy": "no",  # the run saves model/ itself, once, at the end: nothing else is written here
        "report_to": [],  # MetricsFile writes metrics.jsonl and forwards each row to wandb (rlhf.tracking)
        "seed": seed,
        "disable_tqdm": False,  # a progress bar while training
    }


def summary(
    cfg, hw, result, rows: list[dict[str, Any]], data_rows: int, started: float, scores: dict | None = None
) -> dict[str, Any]:
    from rlhf import hardware, models

    losses = [r["loss"] for r in rows if "loss" in r]
    window = max(len(losses) // 10, 1)  # the start and end of the curve, averaged over a tenth of it
    tokens = max((r.get("num_tokens", 0) for r in rows), default=0)
    runtime = result.metrics.get("train_runtime", 0.0)
    trainable, total = models.trainable_parameters(result.model)
    return {
        "method": cfg.method.name,
        "model": cfg.model.name,
        "hardware": hw.name,
        "precision": hardware.precision(hw),
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
        **({"eval": scores["after"], "eval_delta": scores["delta"]} if scores else {}),
        **peak_memory_mb(),
        "wall_time_s": round(time.time() - started, 1),
    }


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.write_text(json.dumps(payload, indent=2) + "\n")


def print_table(summary: dict[str, Any], run_dir: Path) -> None:
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
            for key in METHOD_RESULTS
            if summary.get(key) is not None
        ],
        ("trainable", f"{fmt(summary['trainable_params'])} of {fmt(summary['total_params'])} ({share:.2%})"),
        ("speed", f"{fmt(summary['tokens_per_s'])} tokens/s ({fmt(summary['train_tokens'])} tokens)"),
        ("peak memory", f"{summary['peak_rss_mb']:.0f} MB RSS"),
        ("wall time", f"{summary['wall_time_s']:.0f} s"),
        ("saved to", str(run_dir)),
    ]
    width = max(len(k) for k, _ in lines)
    print("\n" + "-" * 60)
    for key, value in lines:
        print(f"  {key:<{width}}  {value}")
    print("-" * 60)

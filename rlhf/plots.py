"""plots/loss.png: a run's training curves (loss, rewards, KL, learning rate, gradient norm) against the step,
with the held-out values (eval_loss, ...) on the same axes where the run evaluated."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_curves(run_dir: Path, rows: list[dict[str, Any]], title: str) -> list[Path]:
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
        heldout = [(r["step"], r[f"eval_{key}"]) for r in rows if f"eval_{key}" in r]
        if heldout:  # the held-out curve beside the training one: overfitting shows as the two parting
            ax.plot(*zip(*heldout, strict=True), marker="o", color="tab:red", label="held-out")
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

"""What the eval stage writes: eval.json (both sides, the delta, the standard errors), eval.md, the table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def record(cfg: Any, before: dict, after: dict, seconds: dict[str, float], base_cached: bool) -> dict:
    """What eval.json holds: the settings, both sides, the delta per metric and the standard errors."""
    b, a = before["scores"], after["scores"]
    return {
        "tasks": list(cfg.tasks),
        "limit": cfg.limit,
        "num_fewshot": cfg.num_fewshot,
        "apply_chat_template": cfg.apply_chat_template,
        "before": b,
        "after": a,
        "delta": {k: round(a[k] - b[k], 6) for k in a if k in b},
        "stderr": {"before": before["stderr"], "after": after["stderr"]},
        "base_from_cache": base_cached,
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
    }


def markdown(result: dict[str, Any], title: str) -> str:
    lines = [
        f"# {title}",
        "",
        f"tasks: {', '.join(result['tasks'])}; limit: {result['limit']}; few-shot: {result['num_fewshot']}; "
        f"chat template: {result['apply_chat_template']}",
        "",
        "| task | metric | before | after | delta | stderr (after) |",
        "|---|---|---|---|---|---|",
    ]
    for key, after in result["after"].items():
        task, metric = key.split("/", 1)
        before, delta = result["before"].get(key), result["delta"].get(key)
        stderr = result["stderr"]["after"].get(key)
        lines.append(
            f"| {task} | {metric} | {_num(before)} | {_num(after)} | {_num(delta, signed=True)} | {_num(stderr)} |"
        )
    return "\n".join(lines) + "\n"


def _num(value: float | None, signed: bool = False) -> str:
    return "-" if value is None else (f"{value:+.3f}" if signed else f"{value:.3f}")


def print_eval_table(result: dict[str, Any]) -> None:
    """The before/after table a run ends with."""
    width = max((len(k) for k in result["after"]), default=10)
    print(f"\n{'eval (lm-eval)':<{width}}  {'before':>7}  {'after':>7}  {'delta':>7}")
    for key, after in result["after"].items():
        before, delta = result["before"].get(key), result["delta"].get(key)
        print(f"{key:<{width}}  {_num(before):>7}  {_num(after):>7}  {_num(delta, signed=True):>7}")


def write(run_dir: Path, result: dict[str, Any], title: str) -> Path:
    """eval.json + eval.md; a name already taken gets a numbered one, so nothing is overwritten."""
    stem, n = "eval", 1
    while (run_dir / f"{stem}.json").exists() or (run_dir / f"{stem}.md").exists():
        n += 1
        stem = f"eval-{n}"
    (run_dir / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (run_dir / f"{stem}.md").write_text(markdown(result, title))
    return run_dir / f"{stem}.json"

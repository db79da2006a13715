"""What the eval stage writes: eval.json (both sides, the delta, the standard errors), eval.md, the table."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

Z = 2.0  # a delta counts as real when it exceeds twice its combined standard error (about 95%)


def significance(before: dict, after: dict, delta: dict) -> dict[str, dict[str, Any]]:
    """Per metric with a standard error on both sides: the delta's combined stderr sqrt(se_b^2 + se_a^2), the
    interval delta +- 2 x that, and whether the delta exceeds it. With eval.limit=20 a change of 0.15 is about
    one standard error: printed as a change, it would read like a result."""
    out = {}
    for key, d in delta.items():
        sb, sa = before["stderr"].get(key), after["stderr"].get(key)
        if sb is None or sa is None:
            continue
        combined = math.sqrt(sb**2 + sa**2)
        out[key] = {
            "stderr": round(combined, 6),
            "interval": [round(d - Z * combined, 6), round(d + Z * combined, 6)],
            "significant": abs(d) > Z * combined,
        }
    return out


def record(cfg: Any, before: dict, after: dict, seconds: dict[str, float], base_cached: bool) -> dict:
    """What eval.json holds: the settings, both sides, the delta per metric and the standard errors."""
    b, a = before["scores"], after["scores"]
    delta = {k: round(a[k] - b[k], 6) for k in a if k in b}
    tested = significance(before, after, delta)
    return {
        "tasks": list(cfg.tasks),
        "limit": cfg.limit,
        "every_item": [t for t in cfg.tasks if t in cfg.get("every_item", [])],
        "num_fewshot": cfg.num_fewshot,
        "apply_chat_template": cfg.apply_chat_template,
        "before": b,
        "after": a,
        "delta": delta,
        "stderr": {"before": before["stderr"], "after": after["stderr"]},
        "delta_test": tested,  # per metric: combined stderr, the 2-stderr interval, significant or not
        "significant": [k for k, t in tested.items() if t["significant"]],
        "base_from_cache": base_cached,
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
    }


def markdown(result: dict[str, Any], title: str) -> str:
    lines = [
        f"# {title}",
        "",
        f"tasks: {', '.join(result['tasks'])}; limit: {result['limit']}"
        + (f" (every item: {', '.join(result['every_item'])})" if result.get("every_item") else "")
        + f"; few-shot: {result['num_fewshot']}; "
        f"chat template: {result['apply_chat_template']}",
        "",
        "| task | metric | before | after | delta | 95% interval of the delta | real? |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, after in result["after"].items():
        task, metric = key.split("/", 1)
        before, delta = result["before"].get(key), result["delta"].get(key)
        lines.append(
            f"| {task} | {metric} | {_num(before)} | {_num(after)} | {_num(delta, signed=True)} | "
            f"{_interval(result, key)} | {_verdict(result, key)} |"
        )
    lines += [
        "",
        f"real: the delta exceeds {Z:g} x its combined standard error sqrt(se_before^2 + se_after^2).",
    ]
    return "\n".join(lines) + "\n"


def _interval(result: dict[str, Any], key: str) -> str:
    test = result.get("delta_test", {}).get(key)
    return "-" if test is None else f"[{test['interval'][0]:+.3f}, {test['interval'][1]:+.3f}]"


def _verdict(result: dict[str, Any], key: str) -> str:
    test = result.get("delta_test", {}).get(key)
    return "-" if test is None else ("yes" if test["significant"] else "no (noise)")


def _num(value: float | None, signed: bool = False) -> str:
    return "-" if value is None else (f"{value:+.3f}" if signed else f"{value:.3f}")


def print_eval_table(result: dict[str, Any]) -> None:
    """The before/after table a run ends with."""
    width = max((len(k) for k in result["after"]), default=10)
    print(f"\n{'eval (lm-eval)':<{width}}  {'before':>7}  {'after':>7}  {'delta':>7}  {'95% interval':>17}")
    for key, after in result["after"].items():
        before, delta = result["before"].get(key), result["delta"].get(key)
        mark = " *" if key in result.get("significant", []) else ""
        print(
            f"{key:<{width}}  {_num(before):>7}  {_num(after):>7}  {_num(delta, signed=True):>7}  "
            f"{_interval(result, key):>17}{mark}"
        )
    print(f"* a real change: the delta exceeds {Z:g} x its combined standard error")


def write(run_dir: Path, result: dict[str, Any], title: str) -> Path:
    """eval.json + eval.md; a name already taken gets a numbered one, so nothing is overwritten."""
    stem, n = "eval", 1
    while (run_dir / f"{stem}.json").exists() or (run_dir / f"{stem}.md").exists():
        n += 1
        stem = f"eval-{n}"
    (run_dir / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (run_dir / f"{stem}.md").write_text(markdown(result, title))
    return run_dir / f"{stem}.json"

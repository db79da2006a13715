"""What a finished synth run says about itself: stats.json (counts per stage and filter, lengths, the
generator and its settings, speed, stalls) and card.md (the same for a reader, with example rows)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from rlhf.synth.loop import DATA, State

# how each mode's rows are trained on
TRAIN_WITH = {"magpie": "", "self-instruct": "", "preferences": " method=dpo"}


def spread(values: list[int]) -> dict[str, float]:
    if not values:
        return {}
    return {
        "min": min(values),
        "median": statistics.median(values),
        "mean": round(statistics.fmean(values), 1),
        "max": max(values),
    }


def lengths(rows: list[dict], job: Any, tokenizer: Any) -> dict[str, dict[str, dict[str, float]]]:
    """Words and generator tokens of each field's texts over the kept rows."""
    texts: dict[str, list[str]] = {}
    for row in rows:
        for name, found in job.texts_of(row).items():
            texts.setdefault(name, []).extend(found)
    return {
        name: {
            "words": spread([len(t.split()) for t in found]),
            "tokens": spread([len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in found]),
        }
        for name, found in texts.items()
    }


def command(run_dir: Path) -> str:
    overrides = run_dir / ".hydra" / "overrides.yaml"
    given = [str(o) for o in OmegaConf.load(overrides)] if overrides.is_file() else []
    return " ".join(["python -m rlhf.synth", *(o for o in given if not o.startswith("resume="))])


def write(
    run_dir: Path,
    cfg: DictConfig,
    state: State,
    job: Any,
    labels: list[str],
    tokenizer: Any,
    generator: dict[str, Any],
) -> dict[str, Any]:
    rows = [json.loads(line) for line in (run_dir / DATA).read_text().splitlines()]
    dropped = {name: state.dropped.get(name, 0) for name in labels}
    dropped.update({k: v for k, v in state.dropped.items() if k not in dropped})  # the modes' own drops
    record = {
        "mode": cfg.synth.name,
        "command": command(run_dir),
        "generator": generator,
        "seed": cfg.seed,
        "settings": OmegaConf.to_container(cfg.synth, resolve=True),
        "reward": OmegaConf.to_container(cfg.reward, resolve=True),
        "candidates": state.done,
        "kept": state.kept,
        "dropped": state.done - state.kept,
        "dropped_by": dropped,
        "stages": state.stages,
        "lengths": lengths(rows, job, tokenizer),
        "seconds": round(state.seconds, 2),
        "rows_per_s": round(state.kept / state.seconds, 3) if state.seconds else None,
        "candidates_per_s": round(state.done / state.seconds, 3) if state.seconds else None,
        "batches": state.next_batch,
        "retries": state.retries,
        "stalls": state.stalls,
        "final_batch_size": state.chunk,
        "resumes": state.segments - 1,
        "files": {"data": DATA, "rejected": "rejected.jsonl", "card": "card.md"},
    }
    (run_dir / "card.md").write_text(card(record, rows[: cfg.synth.examples], run_dir))
    tmp = run_dir / ".stats.json"
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(run_dir / "stats.json")  # last: its presence marks a finished run
    return record


def card(r: dict[str, Any], examples: list[dict], run_dir: Path) -> str:
    g = r["generator"]
    lines = [
        f"# Synthetic data: {r['mode']} from {g['model']}",
        "",
        f"    {r['command']}",
        "",
        f"{r['kept']} rows kept of {r['candidates']} candidates ({r['dropped']} dropped) in {r['seconds']} s: "
        f"{r['rows_per_s']} rows/s, {r['candidates_per_s']} candidates/s; "
        f"{r['retries']} stalled batches retried, {r['resumes']} resumes.",
        "",
        "| generator | |",
        "|---|---|",
        f"| model | {g['model']} ({g['path']}) |",
        f"| backend | {g['backend']} on {g['device']}, {g['dtype']} |",
        f"| seed | {r['seed']} |",
        *(f"| synth.{k} | {v} |" for k, v in r["settings"].items() if k != "filters"),
        *(f"| synth.filters[{i}] | `{json.dumps(f)}` |" for i, f in enumerate(r["settings"]["filters"])),
        "",
        "## Stages",
        "",
        "| field | in | out |",
        "|---|---|---|",
        *(f"| {k} | {v['in']} | {v['out']} |" for k, v in r["stages"].items()),
        "",
        "## Dropped, by filter (in order)",
        "",
        "| filter | rows |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in r["dropped_by"].items()),
        "",
        "## Lengths of the kept rows",
        "",
        "| field | words min / median / mean / max | tokens min / median / mean / max |",
        "|---|---|---|",
    ]
    for name, measured in r["lengths"].items():
        cells = [" / ".join(str(v) for v in measured[unit].values()) or "-" for unit in ("words", "tokens")]
        lines.append(f"| {name} | {cells[0]} | {cells[1]} |")
    lines += ["", "## Examples", ""]
    for row in examples:
        lines += ["```json", json.dumps(row, ensure_ascii=False, indent=1), "```", ""]
    lines += [
        "## Train on it",
        "",
        f"    python -m rlhf data.path={run_dir / DATA}{TRAIN_WITH[r['mode']]}",
        "",
        "Each dropped row, with the filter that dropped it and why, is in rejected.jsonl.",
        "",
    ]
    return "\n".join(lines)


def print_summary(r: dict[str, Any], run_dir: Path) -> None:
    parts = ", ".join(f"{k} {v}" for k, v in r["dropped_by"].items() if v)
    print(
        f"\nsynth={r['mode']}: {r['kept']} of {r['candidates']} kept ({r['rows_per_s']} rows/s); "
        f"dropped: {parts or 'none'}; retries {r['retries']}"
    )
    print(
        f"wrote {run_dir / DATA} (train on it: python -m rlhf data.path={run_dir / DATA}{TRAIN_WITH[r['mode']]})"
    )

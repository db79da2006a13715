"""Data sets: shipped samples, local files and hub ids, read into the rows TRL's trainers take.

- sources.py: where records come from (JSON / JSONL line by line, CSV / Parquet / hub ids through `datasets`),
  each with its `file:line` (or `split:row`);
- formats.py: which format a record is, and its training rows (TRL's types as they are, the house formats
  converted);
- lengths.py: rows rendered as the trainer sees them, token lengths, rows too long for
  hardware.max_seq_length truncated or dropped.

`python -m rlhf.data [overrides]` previews what a run would train on (data/__main__.py). Reading is plain
Python up to the first rows (no torch), so bad data fails in milliseconds, before weights load.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from omegaconf import DictConfig

from rlhf.data import formats, lengths, sources
from rlhf.data.formats import EXAMPLE_OPTION, FORMATS, user_prompt
from rlhf.data.lengths import tokenizer_for
from rlhf.data.sources import SHIPPED
from rlhf.errors import UserError

__all__ = [
    "FORMATS",
    "SHIPPED",
    "Data",
    "load",
    "load_heldout",
    "sample_prompts",
    "tokenizer_for",
    "user_prompt",
]


@dataclass
class Data:
    format: str
    source: str  # what the rows were read from, for messages and the summary
    rows: list[dict[str, Any]]
    detected_by: list[str] = field(
        default_factory=list
    )  # the keys that told the format; [] if data.format set it
    style: str = "standard"  # standard (strings) or conversational (message lists), TRL's two styles
    records: int = 0  # records read from the source (a chat record gives a row per assistant turn)
    dropped: dict[str, int] = field(
        default_factory=dict
    )  # reason -> rows left out (too_long, prompt_too_long)
    truncated: int = 0  # rows longer than hardware.max_seq_length that the trainer cuts at that length
    lengths: list[int] = field(default_factory=list)  # token length of each row, where lengths were measured


def load(
    cfg: DictConfig,
    accepts: tuple[str, ...],
    method: str,
    key: str = "path",
    tokenizer: Any = None,
    max_length: int | None = None,
    split: str | None = None,
) -> Data:
    """Read `cfg[key]` (data.path, or data.eval_path for held-out rows), check every row, and convert it
    for a method that `accepts` these formats. With a tokenizer and max_length (hardware.max_seq_length),
    rows too long are truncated or dropped as data.too_long says, and counted on the result. `split`: a hub
    data set's split other than data.split (data.eval_split)."""
    path = str(cfg[key])
    source = sources.resolve(path, key)
    if split and source.kind != "hub":
        raise UserError(
            f"data.eval_split={split}: only a hub data set has splits, and data.{key}={path} is a local "
            "file; fix: use data.eval_path=FILE or data.eval_fraction=0.1 instead"
        )
    rows: list[dict[str, Any]] = []
    fmt, keys, style, count = None, [], None, 0
    for where, record in sources.records(source, cfg, split):
        if not isinstance(record, dict):
            raise UserError(f"{where}: expected a JSON object, got {type(record).__name__}; fix: that row")
        record = _renamed(record, cfg.columns, where, check=count == 0)
        if fmt is None:
            fmt, keys = (cfg.format, []) if cfg.format != "auto" else formats.detect(record, where)
            _check_fits(fmt, accepts, method, f"data.{key}={path}")
        for row in formats.convert(fmt, record, where, cfg):
            style = style or formats.style_of(row)
            if formats.style_of(row) != style:
                raise UserError(
                    f"{where}: a {formats.style_of(row)} row after {style} ones; fix: write every row in one "
                    "style, strings or lists of {role, content} messages"
                )
            rows.append(row)
        count += 1
        if cfg.max_samples and len(rows) >= cfg.max_samples:
            break  # what follows is not trained on: not read
    if not rows:
        raise UserError(
            f"data.{key}={path}: the data set has no rows; fix: point data.{key} at a non-empty file"
        )
    if cfg.max_samples:
        rows = rows[: cfg.max_samples]
    data = Data(format=fmt, source=source.label, rows=rows, detected_by=keys, style=style, records=count)
    if tokenizer is not None and max_length:
        data.rows, data.lengths, data.dropped, data.truncated = lengths.fit(
            rows, fmt, tokenizer, max_length, cfg.too_long, f"data.{key}={path}"
        )
        if data.dropped or data.truncated:
            print(f"data.{key}={path}: {describe_lengths(data, max_length, cfg.too_long)}")
    return data


def load_heldout(
    cfg: DictConfig,
    train: Data,
    accepts: tuple[str, ...],
    method: str,
    seed: int,
    tokenizer: Any = None,
    max_length: int | None = None,
) -> tuple[Data, Data | None]:
    """The held-out rows data.eval_path, data.eval_split or data.eval_fraction asks for (None without),
    and the training rows that remain (all of them, unless the held-out rows are a share split off)."""
    fit = {"tokenizer": tokenizer, "max_length": max_length}
    if cfg.eval_path:
        return train, load(cfg, accepts, method, "eval_path", **fit)
    if cfg.eval_split:
        return train, load(cfg, accepts, method, split=cfg.eval_split, **fit)
    if not cfg.eval_fraction:
        return train, None
    return split_off(train, cfg.eval_fraction, seed)


def split_off(data: Data, fraction: float, seed: int) -> tuple[Data, Data]:
    """A share of the rows held out at random, the same rows for the same seed; both parts keep the file's
    order. At least one row stays on each side."""
    import random

    n = len(data.rows)
    if n < 2:
        raise UserError(
            f"data.eval_fraction={fraction}: {data.source} has {n} row, too few to hold any out; fix: set "
            "data.eval_fraction=0 or give more rows"
        )
    held = min(max(round(n * fraction), 1), n - 1)
    chosen = set(random.Random(seed).sample(range(n), held))
    keep = [i for i in range(n) if i not in chosen]
    heldout = [i for i in range(n) if i in chosen]

    def part(indices: list[int]) -> Data:
        lengths = [data.lengths[i] for i in indices] if data.lengths else []
        return replace(data, rows=[data.rows[i] for i in indices], lengths=lengths)

    return part(keep), part(heldout)


def describe_lengths(data: Data, max_length: int, too_long: str) -> str:
    parts = [f"{n} dropped ({reason})" for reason, n in sorted(data.dropped.items())]
    if data.truncated:
        parts.append(f"{data.truncated} truncated by the trainer")
    rule = f"data.too_long={too_long}: {lengths.action(data.format, too_long)}"
    return f"rows over hardware.max_seq_length={max_length} tokens: {', '.join(parts) or 'none'} ({rule})"


def sample_prompts(cfg: DictConfig, data: Data, count: int = 3) -> list[list[dict[str, str]]]:
    """Fixed prompts for the before / after samples, as chat prompts (generation renders the chat template):
    data.sample_prompts, else the first rows' prompts (none for text rows, which have no prompt)."""
    if cfg.sample_prompts:
        return [user_prompt(data.format, text, cfg) for text in cfg.sample_prompts]
    prompts = [row["prompt"] for row in data.rows[:count] if "prompt" in row]
    return [p if isinstance(p, list) else user_prompt(data.format, p, cfg) for p in prompts]


def methods_taking(fmt: str) -> list[str]:
    """The methods whose DATA_FORMATS include a format, read from the method registry."""
    from rlhf import methods

    return [name for name, module in methods.registry().items() if fmt in module.DATA_FORMATS]


def _check_fits(fmt: str, accepts: tuple[str, ...], method: str, what: str) -> None:
    if fmt in accepts:
        return
    takers = methods_taking(fmt)
    other = f", or a method that takes it: {', '.join(f'method={m}' for m in takers)}" if takers else ""
    example = next((EXAMPLE_OPTION[f] for f in accepts if f in EXAMPLE_OPTION), None)
    raise UserError(
        f"{what}: {fmt} data does not fit method={method}, which takes {' / '.join(accepts)}; fix: choose "
        f"a data set of that format{f' (e.g. data={example})' if example else ''}{other}"
    )


def _renamed(record: dict, columns: Any, where: str, check: bool) -> dict:
    """data.columns: the source's column names mapped onto the format's keys."""
    if not columns:
        return record
    if check:
        missing = [c for c in columns if c not in record]
        if missing:
            raise UserError(
                f"{where}: data.columns renames {', '.join(missing)}, which the data lacks (its columns: "
                f"{', '.join(sorted(record))}); fix: name columns it has in data.columns"
            )
    return {columns.get(k, k): v for k, v in record.items()}

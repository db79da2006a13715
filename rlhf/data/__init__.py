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

from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig

from rlhf.data import formats, lengths, sources
from rlhf.data.formats import EXAMPLE_OPTION, FORMATS, user_prompt
from rlhf.data.lengths import tokenizer_for
from rlhf.data.sources import SHIPPED
from rlhf.errors import UserError

__all__ = ["FORMATS", "SHIPPED", "Data", "load", "sample_prompts", "tokenizer_for", "user_prompt"]


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
) -> Data:
    """Read `cfg[key]` (data.path, or data.eval_path for held-out rows), check every row, and convert it
    for a method that `accepts` these formats. With a tokenizer and max_length (hardware.max_seq_length),
    rows too long are truncated or dropped as data.too_long says, and counted on the result."""
    path = str(cfg[key])
    source = sources.resolve(path, key)
    rows: list[dict[str, Any]] = []
    fmt, keys, style, count = None, [], None, 0
    for where, record in sources.records(source, cfg):
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

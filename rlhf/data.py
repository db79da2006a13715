"""Data sets: shipped samples, local JSON / JSONL files and hub ids, read into one conversational form.

Every format becomes rows that TRL's trainers take as they are:
- alpaca, question_decomposition, chat -> {"prompt": [messages], "completion": [assistant message]}
  (the trainer applies the model's chat template and computes the loss on the completion only);
- prompts -> {"prompt": [messages]};
- preference -> {"prompt": [messages], "chosen": [message], "rejected": [message]};
- unpaired -> {"prompt": [messages], "completion": [assistant message], "label": bool} (KTO: one completion
  marked desirable or not, no pair needed).

Reading is plain Python (no torch, no datasets) so bad data fails in milliseconds, before weights load.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from rlhf.errors import UserError
from rlhf.hub import looks_local

SHIPPED = Path(__file__).parent / "datasets"
# the keys that identify each format, checked in this order when data.format=auto
SIGNATURES = [
    ("preference", {"chosen", "rejected"}),
    ("unpaired", {"prompt", "completion", "label"}),  # before prompts: it has a prompt too
    ("question_decomposition", {"question", "sub_questions"}),
    ("alpaca", {"instruction", "output"}),
    ("chat", {"messages"}),
    ("prompts", {"prompt"}),
    ("prompts", {"query"}),
]
ROLES = {"system", "user", "assistant"}
FORMATS = tuple(sorted({fmt for fmt, _ in SIGNATURES}))  # what data.format takes besides auto


@dataclass
class Data:
    format: str
    source: str  # what the rows were read from, for messages and the summary
    rows: list[dict[str, Any]]


# a shipped data option of each format, for error messages
EXAMPLE_OPTION = {
    "alpaca": "instructions",
    "chat": "chat",
    "question_decomposition": "question-decomposition",
    "prompts": "sentiment-prompts",
    "preference": "preferences",
    "unpaired": "unpaired",
}


def load(cfg: DictConfig, accepts: tuple[str, ...], method: str, key: str = "path") -> Data:
    """Read `cfg[key]` (data.path, or data.eval_path for held-out rows), check every row, and convert it
    for a method that `accepts` these formats."""
    if key != "path":
        cfg = OmegaConf.merge(cfg, {"path": cfg[key]})
    source, records = _read(cfg, key)
    if not records:
        raise UserError(
            f"data.{key}={cfg.path}: the data set has no rows; fix: point data.{key} at a non-empty file"
        )
    fmt = cfg.format if cfg.format != "auto" else _detect(records[0][1], source)
    if fmt not in accepts:
        raise UserError(
            f"data.{key}={cfg.path}: {fmt} data does not fit method={method}, which takes "
            f"{' / '.join(accepts)}; fix: choose a data set of that format (e.g. data={EXAMPLE_OPTION[accepts[0]]})"
        )
    rows = [row for where, record in records for row in convert(fmt, record, f"{source}:{where}", cfg)]
    if cfg.max_samples:
        rows = rows[: cfg.max_samples]
    return Data(format=fmt, source=source, rows=rows)


def user_prompt(fmt: str, text: str, cfg: DictConfig) -> list[dict[str, str]]:
    """A free-text prompt wrapped as training prompts of this format are (for samples and evaluation)."""
    if fmt == "question_decomposition":
        text = f"{cfg.decomposition_instruction}\n{text}"
    return [{"role": "user", "content": text}]


def sample_prompts(cfg: DictConfig, data: Data, count: int = 3) -> list[list[dict[str, str]]]:
    if cfg.sample_prompts:
        return [user_prompt(data.format, text, cfg) for text in cfg.sample_prompts]
    return [row["prompt"] for row in data.rows[:count]]


# --------------------------------------------------------------------------- reading


def _resolve(cfg: DictConfig, key: str) -> Path | None:
    """The local file for data.path (or data.eval_path), or None for a hub id."""
    path = str(cfg.path)
    shipped = SHIPPED / f"{path}.jsonl"
    if "/" not in path and "." not in path and shipped.is_file():
        return shipped
    if path.endswith((".json", ".jsonl")) or looks_local(path):
        file = Path(path).expanduser()
        if not file.is_file():
            raise UserError(
                f"data.{key}={path}: file not found; fix: give an existing .json or .jsonl file, "
                f"or a shipped set: {', '.join(sorted(p.stem for p in SHIPPED.glob('*.jsonl')))}"
            )
        return file
    if path.count("/") == 1:
        return None
    raise UserError(
        f"data.{key}={path}: not a shipped data set, a file or a hub id; fix: use one of "
        f"{', '.join(sorted(p.stem for p in SHIPPED.glob('*.jsonl')))}, a .json/.jsonl path, or org/name"
    )


def _read(cfg: DictConfig, key: str) -> tuple[str, list[tuple[str, dict]]]:
    """(source, [(location, record)]) where location is a line number (JSONL) or an item index (JSON)."""
    file = _resolve(cfg, key)
    if file is None:
        return cfg.path, [(f"row {i + 1}", dict(r)) for i, r in enumerate(_read_hub(cfg))]
    text = file.read_text(encoding="utf-8")
    if file.suffix == ".json" or text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"{file}:{e.lineno}: not valid JSON ({e.msg}); fix: correct the file") from None
        if not isinstance(items, list):
            raise UserError(
                f"{file}: a JSON data file must hold a list of objects; fix: wrap the rows in [...]"
            )
        records = [(f"item {i + 1}", item) for i, item in enumerate(items)]
    else:
        records = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append((str(number), json.loads(line)))
            except json.JSONDecodeError as e:
                raise UserError(
                    f"{file}:{number}: not valid JSON ({e.msg}); fix: correct or remove that line"
                ) from None
    for where, record in records:
        if not isinstance(record, dict):
            raise UserError(
                f"{file}:{where}: expected a JSON object, got {type(record).__name__}; fix: that row"
            )
    return str(file), records


def _read_hub(cfg: DictConfig) -> list[dict]:
    import datasets

    try:
        return list(datasets.load_dataset(cfg.path, split=cfg.split))
    except Exception as e:  # offline, unknown id, gated, wrong split: all end the same way for the user
        raise UserError(
            f"data.path={cfg.path}: could not load it from the Hugging Face hub or its cache "
            f"({type(e).__name__}); fix: connect to the network once, or use a local .json/.jsonl file"
        ) from None


def _detect(record: dict, source: str) -> str:
    for fmt, keys in SIGNATURES:
        if keys <= record.keys():
            return fmt
    raise UserError(
        f"{source}: cannot tell the data format from the keys {sorted(record)}; fix: use alpaca "
        "(instruction/input/output), chat (messages), question_decomposition (question/sub_questions), "
        "prompts (prompt), preference (prompt/chosen/rejected) or unpaired (prompt/completion/label), "
        "or set data.format"
    )


# --------------------------------------------------------------------------- converting


def convert(fmt: str, record: dict, where: str, cfg: DictConfig) -> list[dict[str, Any]]:
    """The training rows for one record: one, or one per assistant turn of a chat."""

    def text(key: str) -> str:
        value = record.get(key)
        if not isinstance(value, str) or not value.strip():
            raise UserError(f"{where}: '{key}' must be a non-empty string for {fmt} data; fix: that row")
        return value

    if fmt == "alpaca":
        extra = record.get("input") or ""
        if not isinstance(extra, str):
            raise UserError(f"{where}: 'input' must be a string for alpaca data; fix: that row")
        instruction = text("instruction") + (f"\n\n{extra}" if extra.strip() else "")
        return [_pair(user_prompt(fmt, instruction, cfg), text("output"))]
    if fmt == "question_decomposition":
        subs = record.get("sub_questions")
        if not isinstance(subs, list) or not subs or not all(isinstance(s, str) and s.strip() for s in subs):
            raise UserError(f"{where}: 'sub_questions' must be a non-empty list of strings; fix: that row")
        answer = "\n".join(f"{i}. {s.strip()}" for i, s in enumerate(subs, start=1))
        return [_pair(user_prompt(fmt, text("question"), cfg), answer)]
    if fmt == "chat":
        return _chat(record.get("messages"), where)
    if fmt == "prompts":
        return [{"prompt": user_prompt(fmt, text("prompt" if "prompt" in record else "query"), cfg)}]
    if fmt == "preference":
        return [
            {
                "prompt": user_prompt(fmt, text("prompt"), cfg),
                "chosen": [{"role": "assistant", "content": text("chosen")}],
                "rejected": [{"role": "assistant", "content": text("rejected")}],
            }
        ]
    if fmt == "unpaired":
        label = record.get("label")
        if not (type(label) is bool or (type(label) is int and label in (0, 1))):
            raise UserError(
                f"{where}: 'label' must be true / false (or 1 / 0) for unpaired data, "
                f"got {json.dumps(label)}; fix: that row (true: a desirable completion)"
            )
        return [{**_pair(user_prompt(fmt, text("prompt"), cfg), text("completion")), "label": bool(label)}]
    raise UserError(
        f"data.format={fmt}: unknown format; fix: use one of alpaca, chat, question_decomposition"
    )


def _pair(prompt: list[dict[str, str]], answer: str) -> dict[str, Any]:
    return {"prompt": prompt, "completion": [{"role": "assistant", "content": answer}]}


def _chat(messages: Any, where: str) -> list[dict[str, Any]]:
    """One row per assistant turn: the turn is the completion, everything before it the prompt."""
    ok = isinstance(messages, list) and len(messages) >= 2
    ok = ok and all(
        isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str) for m in messages
    )
    if not ok or messages[-1]["role"] != "assistant" or not any(m["role"] == "user" for m in messages):
        raise UserError(
            f"{where}: 'messages' must be a list of {{role, content}} with roles system/user/assistant, "
            "ending with an assistant turn; fix: that row"
        )
    return [
        {"prompt": messages[:i], "completion": [m]}
        for i, m in enumerate(messages)
        if m["role"] == "assistant" and any(p["role"] == "user" for p in messages[:i])
    ]

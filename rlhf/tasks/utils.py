"""Data loaders and checkers of the offline `eval=quick` tasks (the YAMLs beside this file name them).

lm-eval imports this file by path (`!function utils.<name>`), so the stock `lm_eval` CLI runs these
tasks too: `lm_eval ... --include_path <this folder> --tasks rlhf_quick`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import datasets

HERE = Path(__file__).resolve().parent
SHIPPED = HERE.parent / "datasets"


def _read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _test_split(rows: list[dict[str, Any]]) -> datasets.DatasetDict:
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


# --------------------------------------------------------------------------- data sets


def general_mc(**kwargs: Any) -> datasets.DatasetDict:
    """139 general-knowledge and commonsense questions with four choices each."""
    return _test_split(_read(HERE / "data" / "general_mc.jsonl"))


def instruction_following(**kwargs: Any) -> datasets.DatasetDict:
    """70 prompts whose constraints a program can check (IFEval's idea, our data)."""
    rows = _read(HERE / "data" / "instruction_following.jsonl")
    # one column type for every row: each instruction's arguments as a JSON string
    return _test_split([{"prompt": r["prompt"], "instructions": json.dumps(r["instructions"])} for r in rows])


def question_decomposition(**kwargs: Any) -> datasets.DatasetDict:
    """30 complex questions, none of them in the shipped training set."""
    return _test_split(_read(HERE / "data" / "question_decomposition.jsonl"))


def keyword_prompts(copies: int = 8, **kwargs: Any) -> datasets.DatasetDict:
    """Seed 000's prompts, each `copies` times (interleaved, so any limit covers every prompt)."""
    queries = [r["query"] for r in _read(SHIPPED / "sentiment_prompts.jsonl")]
    return _test_split([{"query": q} for _ in range(copies) for q in queries])


# --------------------------------------------------------------------------- instruction following

WORD = re.compile(r"[A-Za-z0-9']+")
BULLET = re.compile(r"^\s*[-*\u2022]\s+\S", re.MULTILINE)


def _json_object(text: str) -> bool:
    body = text.strip().removeprefix("```json").removeprefix("```").removesuffix("```").strip()
    try:
        return isinstance(json.loads(body), (dict, list))
    except ValueError:
        return False


def follows(instruction: dict[str, Any], response: str) -> bool:
    """Whether `response` keeps one instruction; an unknown type is a bug in the data, so it raises."""
    kind, text = instruction["type"], response.strip()
    words = WORD.findall(text)
    has_word = lambda w: re.search(rf"\b{re.escape(w)}\b", text, re.IGNORECASE) is not None  # noqa: E731
    checks = {
        "lowercase": lambda: text == text.lower() and any(c.isalpha() for c in text),
        "bullet_count": lambda: len(BULLET.findall(text)) == instruction.get("n"),
        "include_word": lambda: has_word(instruction.get("word", "")),
        "avoid_word": lambda: not has_word(instruction.get("word", "")),
        "max_words": lambda: 0 < len(words) <= instruction.get("n", 0),
        "min_words": lambda: len(words) >= instruction.get("n", 0),
        "json_output": lambda: _json_object(text),
        "end_with": lambda: text.lower().endswith(instruction.get("phrase", "").strip().lower()),
        "start_with": lambda: text.lower().startswith(instruction.get("phrase", "").strip().lower()),
        "no_commas": lambda: "," not in text and bool(text),
    }
    if kind not in checks:
        raise ValueError(f"unknown instruction type {kind!r}; known: {', '.join(checks)}")
    return checks[kind]()


def instruction_following_results(doc: dict[str, Any], results: list[str]) -> dict[str, Any]:
    kept = [follows(i, results[0]) for i in json.loads(doc["instructions"])]
    return {"prompt_level_acc": all(kept), "inst_level_acc": kept}


def mean_of_lists(items: list[list[bool]]) -> float:
    """Instruction-level accuracy: every instruction of every prompt counts once."""
    flat = [x for item in items for x in item]
    return sum(flat) / len(flat) if flat else 0.0


# --------------------------------------------------------------------------- seed 000 and seed 003


def _target_words() -> list[str]:
    from rlhf.schema import RewardConfig

    return RewardConfig().words  # the keyword reward's default list (seed 000), defined once


def keyword_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, _target_words())) + r")\b", re.IGNORECASE)
    return {"target_word_rate": float(bool(pattern.search(results[0])))}


def decomposition_prompt(doc: dict[str, Any]) -> str:
    from rlhf.schema import DataConfig

    return f"{DataConfig.decomposition_instruction}\n{doc['question']}"  # as data.user_prompt words it


SUB_QUESTION = re.compile(r"^\s*(\d+)[.)]\s+(.+\?)\s*$")


def decomposition_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    """The trained format is a numbered list of questions ("1. ...?"), one per line, and nothing else."""
    lines = [line for line in results[0].strip().splitlines() if line.strip()]
    numbered = [m for m in map(SUB_QUESTION.match, lines) if m]
    in_order = [int(m.group(1)) for m in numbered] == list(range(1, len(numbered) + 1))
    return {
        "format_acc": float(len(numbered) >= 2 and len(numbered) == len(lines) and in_order),
        "sub_questions": float(len(numbered)),
    }

"""Data formats: which one a record is, and the training row(s) it becomes.

TRL's dataset types pass through as they are, in either of TRL's styles, standard (strings) or
conversational (lists of {role, content} messages):

| format | keys | row the trainer gets |
|---|---|---|
| text | `text` | unchanged (language modeling: the loss covers every token) |
| prompt_completion | `prompt`, `completion` | unchanged (the loss covers the completion) |
| prompts | `prompt` (or `query`) | `{"prompt": [messages]}`: a string becomes one user turn |
| preference | `prompt`, `chosen`, `rejected` | unchanged |
| implicit_preference | `chosen`, `rejected` | `{"prompt", "chosen", "rejected"}`: the shared prefix is the prompt |
| unpaired | `prompt`, `completion`, `label` | unchanged, `label` as a bool |

The house formats are converted to conversational prompt/completion rows: alpaca, question_decomposition,
sharegpt (`conversations` of {from, value}), and chat (`messages`, one row per assistant turn, because the
tiny model's chat template, like most, has no `{% generation %}` marks that TRL's assistant-only loss needs).

Prompt-only strings always become a user turn: every method that takes prompts generates from them, and
generation here (samples, ppo's rollouts, reward scoring) renders the chat template. `data.as_chat=true`
turns the strings of the other types into chat turns too (a user turn for the prompt, an assistant turn for
each answer). The checks are plain Python: TRL's data_utils imports torch, and a bad row must fail before it.
"""

from __future__ import annotations

import json
import re
from typing import Any

from rlhf.errors import UserError

# the keys that identify each format, checked in this order when data.format=auto
SIGNATURES = [
    ("preference", {"prompt", "chosen", "rejected"}),
    ("implicit_preference", {"chosen", "rejected"}),
    ("unpaired", {"prompt", "completion", "label"}),  # before prompt_completion: it has both of its keys
    ("question_decomposition", {"question", "sub_questions"}),
    ("alpaca", {"instruction", "output"}),
    ("sharegpt", {"conversations"}),
    ("chat", {"messages"}),
    ("prompt_completion", {"prompt", "completion"}),
    ("prompts", {"prompt"}),
    ("prompts", {"query"}),
    ("text", {"text"}),
]
FORMATS = tuple(sorted({fmt for fmt, _ in SIGNATURES}))  # what data.format takes besides auto
HOUSE = ("alpaca", "question_decomposition", "sharegpt", "chat")  # converted; the rest are TRL's types
ROLES = {"system", "user", "assistant"}
LABELS = {"true": True, "false": False, "1": True, "0": False}
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
}
# a turn header in a string conversation ("\n\nHuman: ...\n\nAssistant: ..." as in Anthropic's HH-RLHF)
TURN_HEADER = re.compile(r"(?:^|\n)[ \t]*(?:human|assistant|user|system|ai|bot|model)[ \t]*:", re.IGNORECASE)
# a shipped data option of each format, for error messages
EXAMPLE_OPTION = {
    "alpaca": "instructions",
    "chat": "chat",
    "question_decomposition": "question-decomposition",
    "prompts": "sentiment-prompts",
    "preference": "preferences",
    "unpaired": "unpaired",
}


def detect(record: dict, where: str) -> tuple[str, list[str]]:
    """(format, the keys it was recognised by) for a record, in SIGNATURES' order."""
    for fmt, keys in SIGNATURES:
        if keys <= record.keys():
            return fmt, sorted(keys)
    raise UserError(
        f"{where}: cannot tell the data format from the keys {sorted(record)}; fix: rename the columns "
        "(data.columns={old: new}) to one of text, prompt/completion, prompt, prompt/chosen/rejected, "
        "chosen/rejected, prompt/completion/label, messages, conversations, instruction/output or "
        "question/sub_questions, or set data.format"
    )


def is_messages(value: Any) -> bool:
    """A conversational field: a list of {role, content} dicts (trl.data_utils.is_conversational's test)."""
    return isinstance(value, list) and bool(value) and isinstance(value[0], dict) and "role" in value[0]


def style_of(row: dict) -> str:
    """standard or conversational, as TRL tells them apart."""
    return "conversational" if any(is_messages(v) for v in row.values()) else "standard"


def convert(fmt: str, record: dict, where: str, cfg: Any) -> list[dict[str, Any]]:
    """The training rows for one record: one, or one per assistant turn of a chat."""

    def text(key: str) -> str:
        value = record.get(key)
        if not isinstance(value, str) or not value.strip():
            raise UserError(f"{where}: '{key}' must be a non-empty string for {fmt} data; fix: that row")
        return value

    def field(key: str, role: str) -> str | list[dict[str, str]]:
        """A TRL field as given (a string or messages); as chat turns where data.as_chat asks for them."""
        value = record.get(key)
        if isinstance(value, list):
            return messages(value, f"{where}: '{key}'")
        value = text(key)
        return [{"role": role, "content": value}] if cfg.as_chat else value

    if fmt == "alpaca":
        return [_pair(_alpaca_prompt(record, where, cfg, text), text("output"))]
    if fmt == "question_decomposition":
        subs = record.get("sub_questions")
        if not isinstance(subs, list) or not subs or not all(isinstance(s, str) and s.strip() for s in subs):
            raise UserError(f"{where}: 'sub_questions' must be a non-empty list of strings; fix: that row")
        answer = "\n".join(f"{i}. {s.strip()}" for i, s in enumerate(subs, start=1))
        return [_pair(user_prompt(fmt, text("question"), cfg), answer)]
    if fmt == "chat":
        return turns(messages(record.get("messages"), f"{where}: 'messages'"), where)
    if fmt == "sharegpt":
        return turns(_sharegpt(record, where), where)
    if fmt == "text":
        return [{"text": text("text")}]
    if fmt == "prompts":
        key = "prompt" if "prompt" in record else "query"
        value = record.get(key)
        prompt = messages(value, f"{where}: '{key}'") if isinstance(value, list) else None
        return [{"prompt": prompt or user_prompt(fmt, text(key), cfg)}]
    if fmt == "prompt_completion":
        return [
            _same_style(
                {"prompt": field("prompt", "user"), "completion": field("completion", "assistant")}, where
            )
        ]
    if fmt == "preference":
        row = {
            k: field(k, "user" if k == "prompt" else "assistant") for k in ("prompt", "chosen", "rejected")
        }
        return [_same_style(row, where)]
    if fmt == "implicit_preference":
        pair = [
            messages(v, f"{where}: '{k}'") if isinstance(v, list) else text(k)
            for k, v in (("chosen", record.get("chosen")), ("rejected", record.get("rejected")))
        ]
        row = implicit_prompt(*pair, where)
        if cfg.as_chat and isinstance(row["prompt"], str):  # split first: the prompt is inside both strings
            row = {
                k: [{"role": "user" if k == "prompt" else "assistant", "content": v}] for k, v in row.items()
            }
        return [row]
    if fmt == "unpaired":
        label = record.get("label")
        if isinstance(label, str) and label.strip().lower() in LABELS:  # a CSV cell, text
            label = LABELS[label.strip().lower()]
        if not (type(label) is bool or (type(label) is int and label in (0, 1))):
            raise UserError(
                f"{where}: 'label' must be true / false (or 1 / 0) for unpaired data, "
                f"got {json.dumps(label)}; fix: that row (true: a desirable completion)"
            )
        row = {"prompt": field("prompt", "user"), "completion": field("completion", "assistant")}
        return [{**_same_style(row, where), "label": bool(label)}]
    raise UserError(f"data.format={fmt}: unknown format; fix: use one of {', '.join(FORMATS)}")


def user_prompt(fmt: str, text: str, cfg: Any) -> list[dict[str, str]]:
    """A free-text prompt wrapped as training prompts of this format are (for samples and evaluation)."""
    if fmt == "question_decomposition":
        text = f"{cfg.decomposition_instruction}\n{text}"
    return [{"role": "user", "content": text}]


def messages(value: Any, what: str) -> list[dict[str, str]]:
    ok = isinstance(value, list) and bool(value)
    ok = ok and all(
        isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str) for m in value
    )
    if not ok:
        raise UserError(
            f"{what} must be a non-empty list of {{role, content}} with roles system/user/assistant; fix: that row"
        )
    return [{"role": m["role"], "content": m["content"]} for m in value]


def turns(chat: list[dict[str, str]], where: str) -> list[dict[str, Any]]:
    """One row per assistant turn: the turn is the completion, everything before it the prompt."""
    rows = [
        {"prompt": chat[:i], "completion": [m]}
        for i, m in enumerate(chat)
        if m["role"] == "assistant" and any(p["role"] == "user" for p in chat[:i])
    ]
    if not rows or chat[-1]["role"] != "assistant":
        raise UserError(
            f"{where}: a conversation needs a user turn and must end with an assistant turn; fix: that row"
        )
    return rows


def implicit_prompt(chosen: Any, rejected: Any, where: str) -> dict[str, Any]:
    """Explicit prompt/chosen/rejected from a pair whose prompt is inside both answers.

    Message lists: the shared leading messages (trl.data_utils.extract_prompt's rule). Strings: up to the end
    of the last shared turn header ("Assistant:"), else the longest common prefix cut at a whitespace
    boundary; the space before each answer stays with the answer, as extract_prompt leaves it."""
    if isinstance(chosen, list) != isinstance(rejected, list):
        raise UserError(
            f"{where}: 'chosen' and 'rejected' must both be strings or both messages; fix: that row"
        )
    if isinstance(chosen, list):
        cut = 0
        while cut < min(len(chosen), len(rejected)) and chosen[cut] == rejected[cut]:
            cut += 1
    else:
        common = len(_common_prefix(chosen, rejected))
        headers = [m.end() for m in TURN_HEADER.finditer(chosen[:common])]
        if headers:
            cut = headers[-1]
        else:
            spaces = [i for i, c in enumerate(chosen[:common]) if c.isspace()]
            cut = spaces[-1] if spaces else 0
        while cut and chosen[cut - 1].isspace():  # leave the whitespace before the answer to the answer
            cut -= 1
    prompt, chosen_rest, rejected_rest = chosen[:cut], chosen[cut:], rejected[cut:]
    empty = not (prompt if isinstance(prompt, list) else prompt.strip())
    if empty or not chosen_rest or not rejected_rest:
        raise UserError(
            f"{where}: 'chosen' and 'rejected' share no prompt to split off (or one is the other's prefix); "
            "fix: give the prompt in its own 'prompt' field, or make both answers start with the same turns"
        )
    return {"prompt": prompt, "chosen": chosen_rest, "rejected": rejected_rest}


def _common_prefix(a: str, b: str) -> str:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return a[:n]


def _pair(prompt: list[dict[str, str]], answer: str) -> dict[str, Any]:
    return {"prompt": prompt, "completion": [{"role": "assistant", "content": answer}]}


def _same_style(row: dict[str, Any], where: str) -> dict[str, Any]:
    """TRL reads a row as standard or conversational from one field: a mix would be read wrongly."""
    kinds = {isinstance(v, list) for v in row.values()}
    if len(kinds) > 1:
        raise UserError(
            f"{where}: {', '.join(repr(k) for k in row)} mix strings and message lists; fix: write them all "
            "as strings or all as lists of {role, content} (data.as_chat=true makes strings chat turns)"
        )
    return row


def _alpaca_prompt(record: dict, where: str, cfg: Any, text) -> list[dict[str, str]]:
    """system, then each [instruction, output] of `history` as a user and an assistant turn, then the
    instruction (and its input)."""
    extra = record.get("input") or ""
    system = record.get("system") or ""
    history = record.get("history") or []
    if not isinstance(extra, str) or not isinstance(system, str):
        raise UserError(f"{where}: 'input' and 'system' must be strings for alpaca data; fix: that row")
    ok = isinstance(history, list) and all(
        isinstance(h, list) and len(h) == 2 and all(isinstance(s, str) for s in h) for h in history
    )
    if not ok:
        raise UserError(
            f"{where}: 'history' must be a list of [instruction, output] pairs for alpaca data; fix: that row"
        )
    prompt = [{"role": "system", "content": system}] if system.strip() else []
    for asked, answered in history:
        prompt += [{"role": "user", "content": asked}, {"role": "assistant", "content": answered}]
    instruction = text("instruction") + (f"\n\n{extra}" if extra.strip() else "")
    return prompt + user_prompt("alpaca", instruction, cfg)


def _sharegpt(record: dict, where: str) -> list[dict[str, str]]:
    """LLaMA-Factory's sharegpt: `conversations` of {from: human | gpt | system, value}, an optional
    top-level `system`."""
    conversation = record.get("conversations")
    ok = isinstance(conversation, list) and bool(conversation)
    ok = ok and all(
        isinstance(m, dict)
        and SHAREGPT_ROLES.get(m.get("from", m.get("role"))) is not None
        and isinstance(m.get("value", m.get("content")), str)
        for m in conversation
    )
    if not ok:
        raise UserError(
            f"{where}: 'conversations' must be a non-empty list of {{from, value}} with from human/gpt/system; "
            "fix: that row"
        )
    chat = [
        {"role": SHAREGPT_ROLES[m.get("from", m.get("role"))], "content": m.get("value", m.get("content"))}
        for m in conversation
    ]
    system = record.get("system")
    if isinstance(system, str) and system.strip() and chat[0]["role"] != "system":
        chat.insert(0, {"role": "system", "content": system})
    return chat

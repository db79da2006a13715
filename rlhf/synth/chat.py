"""What the generator's own chat template says: the text a user message starts at (Magpie's pre-query
template), the token(s) that end a turn, and a conversation rendered for its next answer.

Everything is read from `tokenizer.apply_chat_template`: a conversation with a sentinel user message is
rendered and cut at the sentinel, so no model needs a hand-written template.
"""

from __future__ import annotations

from typing import Any

from rlhf.errors import UserError

# a user message no template changes (no whitespace to trim, no markup to escape) and no model writes
SENTINEL = "MAGPIEQUERYSENTINEL"


def _render(tokenizer: Any, messages: list[dict[str, str]], generation_prompt: bool) -> str:
    if not getattr(tokenizer, "chat_template", None):
        raise UserError(
            "model: the generator's tokenizer has no chat template, which synth renders conversations "
            "with; fix: use an instruct / chat model (e.g. model=smollm2-135m)"
        )
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def around_sentinel(
    tokenizer: Any, history: list[dict[str, str]], system_prompt: str = ""
) -> tuple[str, str]:
    """The rendered conversation `history` + a sentinel user turn, split at the sentinel: (before, after)."""
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    text = _render(tokenizer, [*system, *history, {"role": "user", "content": SENTINEL}], False)
    if text.count(SENTINEL) != 1:
        raise UserError(
            "model: its chat template does not render a user message as written, so no pre-query template "
            "can be cut from it; fix: use a model whose template renders message content verbatim"
        )
    before, after = text.split(SENTINEL)
    return before, after


def pre_query(tokenizer: Any, history: list[dict[str, str]] | None = None, system_prompt: str = "") -> str:
    """Magpie's pre-query template: the rendered conversation up to where the next user message's content
    starts (the template's system turn, or `system_prompt`, and the user header included)."""
    return around_sentinel(tokenizer, history or [], system_prompt)[0]


def end_of_turn_ids(tokenizer: Any) -> list[int]:
    """The token(s) a turn ends with: the first special token the template writes after a message's
    content (<|im_end|>, <|eot_id|>, ...), and the tokenizer's end-of-sequence token."""
    after = around_sentinel(tokenizer, [])[1]
    special = set(tokenizer.all_special_ids) | {
        i for i, t in tokenizer.added_tokens_decoder.items() if getattr(t, "special", False)
    }
    ids = [i for i in tokenizer(after, add_special_tokens=False)["input_ids"] if i in special][:1]
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    if not ids:
        raise UserError(
            "model: neither its chat template nor its tokenizer names a token that ends a turn; fix: use a "
            "chat model whose tokenizer has an eos_token"
        )
    return ids


def answer_prompt(tokenizer: Any, messages: list[dict[str, str]], system_prompt: str = "") -> str:
    """The conversation rendered with the generation prompt: the text the next assistant turn follows."""
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return _render(tokenizer, [*system, *messages], True)

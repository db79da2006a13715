"""`synth=magpie`: instructions sampled from the generator's own pre-query template, then answered (Magpie,
Xu et al. 2024; seed 004).

The pre-query template is the generator's chat template rendered up to where a user message's content
starts (rlhf/synth/chat.py): given only that, an instruct model writes a user's query. It is sampled with
`synth.instruction_temperature` / `instruction_top_p` and stops at the template's end-of-turn token; the
query is then answered through the normal template with `synth.temperature` / `top_p`. `synth.turns` > 1
continues the conversation the same way; `synth.system_prompt` steers the topic.

Rows: {"messages": [{role: user, ...}, {role: assistant, ...}, ...]}, the chat format `python -m rlhf
data.path=...` trains on (one example per assistant turn). The system prompt is not written to them.
"""

from __future__ import annotations

from typing import Any

from rlhf.synth import chat
from rlhf.synth.backends import Sampling
from rlhf.synth.filters import Candidate
from rlhf.synth.loop import Batch

FIELDS = ("instruction", "response")


class Magpie:
    FIELDS = FIELDS

    def __init__(self, settings: Any, tokenizer: Any) -> None:
        self.s, self.tokenizer = settings, tokenizer
        self.total = settings.count
        stop = chat.end_of_turn_ids(tokenizer)
        self.ask = Sampling(
            settings.instruction_max_new_tokens,
            settings.instruction_temperature,
            settings.instruction_top_p,
            stop,
        )
        self.answer = Sampling(settings.max_new_tokens, settings.temperature, settings.top_p, stop)

    def batch(self, ids: range, batch: Batch) -> list[Candidate]:
        candidates = [Candidate(i, row={"messages": []}) for i in ids]
        system = self.s.system_prompt
        for _ in range(self.s.turns):
            history = [c.row["messages"] for c in candidates]
            queries = batch.generate([chat.pre_query(self.tokenizer, h, system) for h in history], self.ask)
            candidates = self._add(batch, candidates, queries, "user", "instruction")
            candidates = batch.filter(candidates, "instruction")
            prompts = [chat.answer_prompt(self.tokenizer, c.row["messages"], system) for c in candidates]
            answers = batch.generate(prompts, self.answer)
            for c in candidates:
                c.prompt = list(c.row["messages"])  # what the reward filter scores the answer against
            candidates = self._add(batch, candidates, answers, "assistant", "response")
            candidates = batch.filter(candidates, "response")
        return candidates

    def _add(
        self, batch: Batch, candidates: list[Candidate], texts: list[str], role: str, on: str
    ) -> list[Candidate]:
        """Each candidate's new turn; one whose text is empty is dropped (a chat row needs content)."""
        kept = []
        for c, text in zip(candidates, texts, strict=True):
            text = text.strip()
            if not text:
                batch.drop(c, f"empty:{on}", f"the generator wrote no {on}")
                continue
            c.add(on, text)
            c.row["messages"].append({"role": role, "content": text})
            kept.append(c)
        return kept

    def keep(self, kept: list[Candidate]) -> None:
        pass

    def restore(self, rows: list[dict]) -> None:
        pass

    def initial_texts(self) -> list[dict[str, list[str]]]:
        return []

    def texts_of(self, row: dict) -> dict[str, list[str]]:
        turns = row["messages"]
        return {
            "instruction": [m["content"] for m in turns if m["role"] == "user"],
            "response": [m["content"] for m in turns if m["role"] == "assistant"],
        }

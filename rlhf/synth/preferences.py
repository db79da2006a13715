"""`synth=preferences`: preference pairs scored by the reward group (seed 004).

For each prompt of `synth.prompts` (read with rlhf.data, so any data.path value and format with a prompt
works), `synth.n` answers are sampled through the chat template, answer i at `synth.temperatures[i % len]`,
and scored by the reward group (rlhf/rewards.py: a method=rm run's model/, a sequence-classification
model, the keyword reward, or a mix). The best answer is chosen; the worst is rejected, or with
`synth.rejected=random_lower` any one scored below the chosen. A pair whose margin is zero (a tie) or below
`synth.min_margin` goes to rejected.jsonl, counted as `margin`.

Rows: {"prompt": [messages], "chosen": [assistant turn], "rejected": [assistant turn], "chosen_score",
"rejected_score", "scores"}: TRL's conversational preference type, which `method=dpo` / `rm` train on. The
filters read instruction (the prompt's last user turn), response (the chosen answer) and rejected.
"""

from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf

from rlhf.errors import UserError
from rlhf.synth import chat
from rlhf.synth.backends import Sampling
from rlhf.synth.filters import Candidate
from rlhf.synth.loop import Batch

FIELDS = ("instruction", "response", "rejected")


def load_prompts(path: str, count: int) -> list[list[dict[str, str]]]:
    """The prompts of a data set as chat messages (a string prompt becomes a user turn); count 0: all."""
    from rlhf import data
    from rlhf.schema import DataConfig

    node = OmegaConf.structured(DataConfig(name="synth.prompts", path=path, max_samples=count))
    try:
        loaded = data.load(node, data.FORMATS, "synth=preferences")
    except UserError as e:  # its messages name data.path: here the value came from synth.prompts
        raise UserError(str(e).replace(f"data.path={path}", f"synth.prompts={path}")) from None
    if not all("prompt" in r for r in loaded.rows):
        raise UserError(
            f"synth.prompts={path}: {loaded.format} rows have no prompt to answer; fix: give prompts "
            "(a prompt / instruction / messages data set, e.g. synth.prompts=instructions)"
        )
    return [
        r["prompt"] if isinstance(r["prompt"], list) else [{"role": "user", "content": r["prompt"]}]
        for r in loaded.rows
    ]


class Preferences:
    FIELDS = FIELDS

    def __init__(self, settings: Any, tokenizer: Any, rewards: list, prompts: list[list[dict]]) -> None:
        self.s, self.tokenizer, self.rewards = settings, tokenizer, rewards
        self.prompts = prompts  # load_prompts(settings.prompts, settings.count)
        self.total = len(self.prompts)
        stop = chat.end_of_turn_ids(tokenizer)
        self.sampling = [
            Sampling(settings.max_new_tokens, t, settings.top_p, stop) for t in settings.temperatures
        ]

    def batch(self, ids: range, batch: Batch) -> list[Candidate]:
        from rlhf.rewards import total

        candidates = []
        for i in ids:
            c = Candidate(i, prompt=self.prompts[i], row={"prompt": self.prompts[i]})
            users = [m["content"] for m in self.prompts[i] if m["role"] == "user"]
            c.add("instruction", users[-1] if users else "")
            candidates.append(c)
        candidates = batch.filter(candidates, "instruction")
        rendered = [chat.answer_prompt(self.tokenizer, c.prompt) for c in candidates]
        n, temps = self.s.n, len(self.sampling)
        answers: list[list[str]] = [[""] * n for _ in candidates]
        for t, sampling in enumerate(self.sampling):  # one call per temperature, every prompt repeated
            slots = [(k, j) for k in range(len(candidates)) for j in range(t, n, temps)]
            texts = batch.generate([rendered[k] for k, _ in slots], sampling)
            for (k, j), text in zip(slots, texts, strict=True):
                answers[k][j] = text.strip()
        flat = [(c, a) for c, these in zip(candidates, answers, strict=True) for a in these]
        scores, _ = (
            total(self.rewards, [c.prompt for c, _ in flat], [a for _, a in flat]) if flat else ([], {})
        )
        kept = []
        for k, c in enumerate(candidates):
            mine = scores[k * n : (k + 1) * n]
            best = max(range(n), key=lambda j: mine[j])
            lower = [j for j in range(n) if mine[j] < mine[best]]
            if self.s.rejected == "random_lower" and lower:
                worst = batch.rng.choice(lower)
            else:
                worst = min(range(n), key=lambda j: mine[j])
            margin = mine[best] - mine[worst]
            if margin <= 0 or margin < self.s.min_margin:
                c.row.update(answers=answers[k], scores=mine)
                batch.drop(c, "margin", f"margin {margin:.3f} (tie or < {self.s.min_margin})")
                continue
            c.add("response", answers[k][best])
            c.add("rejected", answers[k][worst])
            c.row.update(
                chosen=[{"role": "assistant", "content": answers[k][best]}],
                rejected=[{"role": "assistant", "content": answers[k][worst]}],
                chosen_score=mine[best],
                rejected_score=mine[worst],
                scores=mine,
            )
            kept.append(c)
        kept = batch.filter(kept, "response")
        return batch.filter(kept, "rejected")

    def keep(self, kept: list[Candidate]) -> None:
        pass

    def restore(self, rows: list[dict]) -> None:
        pass

    def initial_texts(self) -> list[dict[str, list[str]]]:
        return []

    def texts_of(self, row: dict) -> dict[str, list[str]]:
        users = [m["content"] for m in row["prompt"] if m["role"] == "user"]
        return {
            "instruction": users[-1:],
            "response": [row["chosen"][0]["content"]],
            "rejected": [row["rejected"][0]["content"]],
        }

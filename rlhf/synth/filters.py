"""The quality filters of `python -m rlhf.synth`: `synth.filters` is a list of entries, each a filter's name,
the field it reads and its parameters; the pipeline applies them in order and counts what each drops.

    synth.filters=[{name: length, field: instruction, unit: words, min: 3, max: 150}, {name: refusal}]

A filter is a dataclass registered under its name: its fields are its parameters and their defaults (the
only place those live). `field` names a field of the mode's rows (rlhf/synth/<mode>.py FIELDS): instruction
and response everywhere, input for self-instruct, rejected for preferences (response is the chosen answer
there). A filter runs as soon as the field it reads has been generated, so an instruction a filter drops is
never answered.

Filters that compare a row with the rows before it (exact_dedup, near_dedup, rouge) keep a pool: the kept
rows' texts, with the candidates of the batch in progress that have passed so far; a batch's candidates that
end up dropped leave the pool again when the batch settles. A resumed run rebuilds the pool from data.jsonl.
"""

from __future__ import annotations

import dataclasses
import re
import string
from collections import Counter
from dataclasses import dataclass
from typing import Any, ClassVar

from omegaconf import DictConfig, OmegaConf

from rlhf.errors import Problems

FILTERS: dict[str, type[Filter]] = {}


def register(name: str):
    def add(cls: type[Filter]) -> type[Filter]:
        cls.NAME = name
        FILTERS[name] = cls
        return cls

    return add


@dataclass
class Candidate:
    """One row being made: its id (its place in the run), the texts of each field so far (a multi-turn
    conversation has one per turn), the prompt its newest response answers (for reward scoring), and the
    row as it will be written."""

    id: int
    texts: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    prompt: Any = None
    row: dict[str, Any] = dataclasses.field(default_factory=dict)

    def add(self, name: str, text: str) -> None:
        self.texts.setdefault(name, []).append(text)


@dataclass
class Filter:
    field: str = "instruction"  # the row field it reads (named so, not `on`: YAML 1.1 reads `on` as true)
    NAME: ClassVar[str] = ""

    def check(self, problems: Problems, key: str) -> None:
        """Rules on the parameters' values (their types are checked when the entry is read)."""

    def setup(self, tokenizer: Any, rewards: list) -> None:
        """Objects a filter needs from the run (the tokenizer for token lengths, the reward group)."""

    def reasons(self, items: list[tuple[str, Candidate]]) -> list[str | None]:
        """For each (text, candidate) in order: why it is dropped, or None to keep it."""
        return [self.reason(text) for text, _ in items]

    def reason(self, text: str) -> str | None:
        raise NotImplementedError


@register("length")
@dataclass
class Length(Filter):
    """Length bounds in words or in the generator's tokens (max 0: no upper bound)."""

    unit: str = "words"
    min: int = 1
    max: int = 0

    def check(self, problems: Problems, key: str) -> None:
        problems.one_of(f"{key}.unit", self.unit, ("words", "tokens"))
        problems.check(self.min >= 0, f"{key}.min", self.min, "must be >= 0", "use e.g. min: 3")
        problems.check(
            self.max == 0 or self.max >= self.min,
            f"{key}.max",
            self.max,
            f"must be 0 (no bound) or >= min={self.min}",
            "use e.g. max: 150",
        )

    def setup(self, tokenizer: Any, rewards: list) -> None:
        self.tokenizer = tokenizer

    def reason(self, text: str) -> str | None:
        if self.unit == "words":
            n = len(text.split())
        else:
            n = len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        if n < self.min:
            return f"{n} {self.unit} < {self.min}"
        if self.max and n > self.max:
            return f"{n} {self.unit} > {self.max}"
        return None


class Pool(Filter):
    """A filter that compares each text with those kept before it."""

    def setup(self, tokenizer: Any, rewards: list) -> None:
        self.pending: dict[int, list[Any]] = {}

    def reasons(self, items: list[tuple[str, Candidate]]) -> list[str | None]:
        out = []
        for text, candidate in items:  # in order: a candidate is compared with the ones that passed before it
            why = self.reason(text)
            if why is None:
                self.pending.setdefault(candidate.id, []).append(self.remember(text, f"p{candidate.id}"))
            out.append(why)
        return out

    def settle(self, kept: set[int]) -> None:
        """The batch is done: its kept candidates' texts stay in the pool, the others' leave it."""
        for cid, entries in self.pending.items():
            if cid not in kept:
                for entry in entries:
                    self.forget(entry)
        self.pending = {}

    def remember(self, text: str, key: str) -> Any:
        raise NotImplementedError

    def forget(self, entry: Any) -> None:
        raise NotImplementedError


def normalized(text: str) -> str:
    return " ".join(text.lower().split())


def ngrams(words: list[str], n: int) -> list[str]:
    """The word n-grams of `words` in order (a text shorter than n is its own one n-gram)."""
    return [" ".join(words[i : i + n]) for i in range(max(len(words) - n + 1, 1))]


@register("exact_dedup")
@dataclass
class ExactDedup(Pool):
    """Drops a text equal to an earlier one (case and whitespace aside)."""

    def setup(self, tokenizer: Any, rewards: list) -> None:
        super().setup(tokenizer, rewards)
        self.seen: Counter[str] = Counter()

    def reason(self, text: str) -> str | None:
        return "duplicate" if self.seen[normalized(text)] else None

    def remember(self, text: str, key: str) -> Any:
        self.seen[normalized(text)] += 1
        return normalized(text)

    def forget(self, entry: Any) -> None:
        self.seen[entry] -= 1


@register("near_dedup")
@dataclass
class NearDedup(Pool):
    """Drops a text whose word n-grams' estimated Jaccard similarity to an earlier one is at least
    `threshold` (MinHash LSH from datasketch)."""

    threshold: float = 0.8
    num_perm: int = 128
    ngram: int = 3  # words per shingle

    def check(self, problems: Problems, key: str) -> None:
        problems.check(
            0 < self.threshold <= 1, f"{key}.threshold", self.threshold, "must be in (0, 1]", "use e.g. 0.8"
        )
        problems.check(self.num_perm >= 16, f"{key}.num_perm", self.num_perm, "must be >= 16", "use 128")
        problems.check(self.ngram >= 1, f"{key}.ngram", self.ngram, "must be >= 1", "use e.g. 3")

    def setup(self, tokenizer: Any, rewards: list) -> None:
        from datasketch import MinHashLSH

        super().setup(tokenizer, rewards)
        self.lsh = MinHashLSH(threshold=self.threshold, num_perm=self.num_perm)
        self.count = 0

    def minhash(self, text: str) -> Any:
        from datasketch import MinHash

        words = normalized(text).split()
        shingles = set(ngrams(words, self.ngram))
        m = MinHash(num_perm=self.num_perm)  # a fixed seed: the same text hashes the same in every run
        m.update_batch([s.encode() for s in shingles])
        return m

    def reason(self, text: str) -> str | None:
        found = self.lsh.query(self.minhash(text))
        return f"near-duplicate of {len(found)} earlier" if found else None

    def remember(self, text: str, key: str) -> Any:
        self.count += 1
        name = f"{key}:{self.count}"
        self.lsh.insert(name, self.minhash(text))
        return name

    def forget(self, entry: Any) -> None:
        self.lsh.remove(entry)


@register("rouge")
@dataclass
class Rouge(Pool):
    """Drops a text whose ROUGE-L F-measure with an earlier one exceeds `threshold` (Self-Instruct's 0.7;
    the pool starts with the seed tasks' instructions)."""

    threshold: float = 0.7

    def check(self, problems: Problems, key: str) -> None:
        problems.check(
            0 < self.threshold <= 1, f"{key}.threshold", self.threshold, "must be in (0, 1]", "use e.g. 0.7"
        )

    def setup(self, tokenizer: Any, rewards: list) -> None:
        import logging

        from rouge_score import rouge_scorer

        logging.getLogger("absl").setLevel(logging.WARNING)  # rouge_score logs "Using default tokenizer."
        super().setup(tokenizer, rewards)
        self.scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
        self.texts: dict[str, str] = {}
        self.count = 0

    def reason(self, text: str) -> str | None:
        best = max((self.scorer.score(t, text)["rougeL"].fmeasure for t in self.texts.values()), default=0.0)
        return f"ROUGE-L {best:.2f} > {self.threshold}" if best > self.threshold else None

    def remember(self, text: str, key: str) -> Any:
        self.count += 1
        name = f"{key}:{self.count}"
        self.texts[name] = text
        return name

    def forget(self, entry: Any) -> None:
        del self.texts[entry]


@register("language")
@dataclass
class Language(Filter):
    """Keeps texts py3langid identifies as one of `languages` (ISO 639-1) with probability >= min_prob."""

    languages: list[str] = dataclasses.field(default_factory=lambda: ["en"])
    min_prob: float = 0.0

    def check(self, problems: Problems, key: str) -> None:
        problems.check(
            bool(self.languages), f"{key}.languages", self.languages, "empty", "use e.g. languages: [en]"
        )
        problems.check(
            0 <= self.min_prob <= 1, f"{key}.min_prob", self.min_prob, "must be in [0, 1]", "use e.g. 0.5"
        )

    def setup(self, tokenizer: Any, rewards: list) -> None:
        from py3langid.langid import MODEL_FILE, LanguageIdentifier

        # the model shipped in the wheel, with probabilities normalised to [0, 1] (classify's are log-odds)
        self.identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)

    def reason(self, text: str) -> str | None:
        lang, prob = self.identifier.classify(text)
        if lang not in self.languages:
            return f"language {lang}"
        return f"language {lang} at p={prob:.2f} < {self.min_prob}" if prob < self.min_prob else None


REFUSALS = [
    r"\bas an ai\b",
    r"\bas a language model\b",
    r"\bi(?:'m| am) (?:sorry|afraid),? but\b",
    r"\bi (?:cannot|can't|can not) (?:help|assist|provide|fulfill|comply)",
    r"\bi(?:'m| am) (?:not able|unable) to\b",
    r"\bi do(?:n't| not) have (?:personal|the ability|access)",
    r"\bmy (?:training|knowledge) (?:data|cutoff)\b",
    r"\bi apologi[sz]e,? but\b",
]


@register("refusal")
@dataclass
class Refusal(Filter):
    """Drops refusals and assistant boilerplate: a regular expression of `patterns` found anywhere (any case)."""

    field: str = "response"
    patterns: list[str] = dataclasses.field(default_factory=lambda: list(REFUSALS))

    def check(self, problems: Problems, key: str) -> None:
        for i, pattern in enumerate(self.patterns):
            try:
                re.compile(pattern)
            except re.error as e:
                problems.check(
                    False, f"{key}.patterns[{i}]", pattern, f"not a regular expression ({e})", "fix it"
                )

    def setup(self, tokenizer: Any, rewards: list) -> None:
        self.compiled = [re.compile(p, re.IGNORECASE) for p in self.patterns]

    def reason(self, text: str) -> str | None:
        found = next((m for p in self.compiled if (m := p.search(text))), None)
        return f"boilerplate {found.group(0)!r}" if found else None


@register("repetition")
@dataclass
class Repetition(Filter):
    """Drops a degenerate text that loops: the share of its word n-grams that are distinct is below
    `min_distinct` (Gopher's repetition rule, in its simplest form; texts shorter than 2n words pass)."""

    field: str = "response"
    ngram: int = 4
    min_distinct: float = 0.5

    def check(self, problems: Problems, key: str) -> None:
        problems.check(self.ngram >= 1, f"{key}.ngram", self.ngram, "must be >= 1", "use e.g. 4")
        problems.check(
            0 < self.min_distinct <= 1,
            f"{key}.min_distinct",
            self.min_distinct,
            "must be in (0, 1]",
            "use e.g. 0.5",
        )

    def reason(self, text: str) -> str | None:
        words = text.lower().split()
        if len(words) < 2 * self.ngram:
            return None
        grams = ngrams(words, self.ngram)
        share = len(set(grams)) / len(grams)
        return (
            f"{share:.2f} of {self.ngram}-grams distinct < {self.min_distinct}"
            if share < self.min_distinct
            else None
        )


@register("ends_with_colon")
@dataclass
class EndsWithColon(Filter):
    """Drops an instruction ending with ':' (it announces content that never came)."""

    def reason(self, text: str) -> str | None:
        return "ends with ':'" if text.rstrip().endswith(":") else None


# Self-Instruct's keyword list: tasks a language model cannot do from text alone
BLACKLIST = [
    "image",
    "images",
    "graph",
    "graphs",
    "picture",
    "pictures",
    "file",
    "files",
    "map",
    "maps",
    "draw",
    "plot",
    "go to",
    "video",
    "audio",
    "music",
    "flowchart",
    "diagram",
]


@register("blacklist")
@dataclass
class Blacklist(Filter):
    """Drops a text containing one of `words` as whole words (any case)."""

    words: list[str] = dataclasses.field(default_factory=lambda: list(BLACKLIST))

    def check(self, problems: Problems, key: str) -> None:
        problems.check(bool(self.words), f"{key}.words", self.words, "empty", "name words, or drop the entry")

    def setup(self, tokenizer: Any, rewards: list) -> None:
        self.pattern = re.compile(r"\b(" + "|".join(re.escape(w) for w in self.words) + r")\b", re.IGNORECASE)

    def reason(self, text: str) -> str | None:
        found = self.pattern.search(text)
        return f"blacklisted {found.group(0)!r}" if found else None


@register("leading_punctuation")
@dataclass
class LeadingPunctuation(Filter):
    """Drops a text that starts with punctuation (Self-Instruct)."""

    def reason(self, text: str) -> str | None:
        return f"starts with {text[0]!r}" if text and text[0] in string.punctuation else None


@register("non_english_start")
@dataclass
class NonEnglishStart(Filter):
    """Drops a text whose first character is not ASCII (Self-Instruct's test for a non-English start)."""

    def reason(self, text: str) -> str | None:
        return f"starts with {text[0]!r}" if text and not text[0].isascii() else None


@register("reward")
@dataclass
class RewardScore(Filter):
    """Drops a response the reward group scores below `min_score` (given the prompt it answers)."""

    field: str = "response"
    min_score: float = 0.0

    def setup(self, tokenizer: Any, rewards: list) -> None:
        self.rewards = rewards

    def reasons(self, items: list[tuple[str, Candidate]]) -> list[str | None]:
        from rlhf.rewards import total

        if not items:
            return []
        scores, _ = total(self.rewards, [c.prompt for _, c in items], [text for text, _ in items])
        return [f"reward {s:.3f} < {self.min_score}" if s < self.min_score else None for s in scores]


def parse(entries: Any, fields: tuple[str, ...], problems: Problems) -> list[Filter]:
    """synth.filters as filter objects (not set up); every bad entry, name or parameter is a problem."""
    found: list[Filter] = []
    for i, entry in enumerate(entries or []):
        key = f"synth.filters[{i}]"
        if not isinstance(entry, (dict, DictConfig)) or "name" not in entry:
            problems.check(
                False, key, entry, "must be an entry with a name", "write {name: length, field: instruction}"
            )
            continue
        params = OmegaConf.to_container(entry) if isinstance(entry, DictConfig) else dict(entry)
        name = params.pop("name")
        if name not in FILTERS:
            problems.one_of(f"{key}.name", name, sorted(FILTERS))
            continue
        cls = FILTERS[name]
        allowed = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in params if k not in allowed]
        for k in unknown:
            problems.check(
                False,
                f"{key}.{k}",
                params[k],
                f"no such parameter of filter {name}",
                f"use one of: {', '.join(allowed)}",
            )
        if unknown:
            continue
        try:
            typed = OmegaConf.merge(OmegaConf.structured(cls), params)
        except Exception as e:  # OmegaConf's ValidationError: a value of the wrong type
            bad = getattr(e, "full_key", "") or "?"
            problems.check(
                False,
                f"{key}.{bad}",
                params.get(bad, "?"),
                "wrong type",
                f"give a value of {name}'s {bad} type ({cls.__doc__.splitlines()[0]})",
            )
            continue
        made = OmegaConf.to_object(typed)
        problems.check(
            made.field in fields,
            f"{key}.field",
            made.field,
            "not a field of this mode's rows",
            f"choose one of: {', '.join(fields)}",
        )
        made.check(problems, key)
        found.append(made)
    return found


def label(f: Filter, taken: set[str]) -> str:
    """The name its counts go under: name:field (name:field#2 for a second such entry)."""
    base = f"{f.NAME}:{f.field}"
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}#{n}"
    return name


class Pipeline:
    """The filters of a run in order, each counting what it drops, and the rows they dropped."""

    def __init__(self, filters: list[Filter], tokenizer: Any = None, rewards: list | None = None) -> None:
        taken: set[str] = set()
        self.filters: list[tuple[str, Filter]] = []
        for f in filters:
            name = label(f, taken)
            taken.add(name)
            f.setup(tokenizer, rewards or [])
            self.filters.append((name, f))
        self.uses_reward = any(isinstance(f, RewardScore) for f in filters)

    def labels(self) -> list[str]:
        return [name for name, _ in self.filters]

    def apply(
        self, candidates: list[Candidate], on: str, dropped: Counter, rejected: list[dict]
    ) -> list[Candidate]:
        """The candidates that pass every filter reading `on` (their newest text of it); each drop is counted
        under its filter's label and recorded in `rejected`."""
        for name, f in self.filters:
            if f.field != on or not candidates:
                continue
            reasons = f.reasons([(c.texts[on][-1], c) for c in candidates])
            kept = []
            for c, why in zip(candidates, reasons, strict=True):
                if why is None:
                    kept.append(c)
                else:
                    dropped[name] += 1
                    rejected.append(rejection(c, name, why))
            candidates = kept
        return candidates

    def settle(self, kept: set[int]) -> None:
        for _, f in self.filters:
            if isinstance(f, Pool):
                f.settle(kept)

    def restore(self, texts: list[dict[str, list[str]]]) -> None:
        """Pools refilled with these texts (the seed tasks', the rows a resumed run had kept), in order."""
        for _, f in self.filters:
            if isinstance(f, Pool):
                for i, row in enumerate(texts):
                    for text in row.get(f.field, []):
                        f.remember(text, f"r{i}")


def rejection(c: Candidate, by: str, why: str) -> dict[str, Any]:
    """A rejected.jsonl row: which filter dropped the candidate, why, and what it had so far."""
    return {"id": c.id, "filter": by, "reason": why, "texts": c.texts, "row": c.row or None}

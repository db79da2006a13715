"""`synth=self-instruct`: Self-Instruct's bootstrap (Wang et al. 2023; seed 002) from a seed-task file.

1. Instructions: a prompt of 8 instructions (`synth.prompt_seed_tasks` seed tasks and
   `prompt_machine_tasks` generated ones, as in the paper's 6 + 2; seed tasks fill in while too few have been
   generated) under "Come up with a series of tasks:", numbered; the model writes the next one.
2. Classification: a few-shot prompt of seed tasks asks whether the task is classification.
3. Instances: output-first for classification tasks (the class label, then an input for it), input-first
   otherwise (the input, then the output), shown with seed tasks' instances of the same kind.
4. Filters: the paper's (3-150 words, a keyword blacklist, no leading punctuation, an ASCII first
   character, ROUGE-L <= 0.7 against every instruction so far, seed tasks included) as synth.filters.

The prompts are plain text (no chat template): the paper's method for a language model continuing a list.
Seed tasks are Self-Instruct's JSONL: {"id", "name", "instruction", "instances": [{"input", "output"}],
"is_classification"}. Rows: alpaca {"instruction", "input", "output"} (+ "is_classification").
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from rlhf.errors import UserError
from rlhf.synth.backends import Sampling
from rlhf.synth.filters import Candidate
from rlhf.synth.loop import Batch

FIELDS = ("instruction", "input", "response")
SHIPPED_SEEDS = Path(__file__).resolve().parent.parent / "datasets" / "self_instruct_seed.jsonl"

TASKS_HEADER = "Come up with a series of tasks:\n"
CLASSIFY_HEADER = "Can the following task be regarded as a classification task with finite output labels?\n\n"
INPUT_FIRST_HEADER = (
    "Come up with examples for the following tasks. Try to generate multiple examples when possible. "
    "If the task doesn't require additional input, you can generate the output directly.\n\n"
)
OUTPUT_FIRST_HEADER = (
    "Given the classification task definition and the class labels, generate an input that corresponds "
    "to each of the class labels. If the task doesn't require input, just generate possible class "
    "labels.\n\n"
)
NUMBERED = re.compile(r"^\s*\d+\s*[.)]\s*")
# where one instance ends: a blank line, or the next example's field (small models run on into more)
INSTANCE_END = re.compile(r"\n\s*\n|\n\s*(?:Input|Output|Class label|Example \d+|Task)\s*:?", re.IGNORECASE)
INPUT_FIRST = re.compile(r"^\s*(?:Input:\s*(?P<input>.*?)\s*\n)?\s*Output:\s*(?P<output>.+)$", re.DOTALL)
OUTPUT_FIRST = re.compile(r"^\s*Class label:\s*(?P<output>.+?)\s*\n\s*Input:\s*(?P<input>.+)$", re.DOTALL)


def load_seed_tasks(path: str) -> list[dict[str, Any]]:
    """The seed tasks, each line checked: a bad one names its file and line."""
    file = Path(path).expanduser() if path else SHIPPED_SEEDS
    if not file.is_file():
        raise UserError(
            f"synth.seed_tasks={path}: file not found; fix: give a Self-Instruct seed-task JSONL file, or '' "
            "for the shipped one"
        )
    tasks = []
    for n, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{file}:{n}"
        try:
            task = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{where}: not JSON ({e.msg}); fix: that line") from None
        instances = task.get("instances") if isinstance(task, dict) else None
        ok = (
            isinstance(task, dict)
            and isinstance(task.get("instruction"), str)
            and task["instruction"].strip()
            and isinstance(task.get("is_classification"), bool)
            and isinstance(instances, list)
            and instances
            and all(
                isinstance(i, dict) and isinstance(i.get("input"), str) and isinstance(i.get("output"), str)
                for i in instances
            )
        )
        if not ok:
            raise UserError(
                f"{where}: a seed task needs a non-empty 'instruction', 'is_classification' (true / false) "
                "and 'instances': [{input, output}, ...]; fix: that line"
            )
        tasks.append(task)
    kinds = {t["is_classification"] for t in tasks}
    if len(tasks) < 8 or kinds != {True, False}:
        raise UserError(
            f"synth.seed_tasks={path or SHIPPED_SEEDS}: {len(tasks)} tasks, classification ones "
            f"{'and others' if len(kinds) == 2 else 'or others missing'}; fix: give at least 8 seed tasks, "
            "some classification and some not"
        )
    return tasks


def one_line(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def tasks_prompt(instructions: list[str]) -> str:
    """The paper's bootstrap prompt: the numbered instructions, then the next number for the model."""
    lines = [f"{i}. {one_line(t).rstrip(':')}" for i, t in enumerate(instructions, start=1)]
    return TASKS_HEADER + "\n".join(lines) + f"\n{len(instructions) + 1}."


def first_part(text: str) -> str:
    """A generated field up to where the instance ends."""
    return INSTANCE_END.split(text, maxsplit=1)[0].strip()


def demonstration(task: dict[str, Any], output_first: bool) -> str:
    """A seed task with its first instance, as the instance prompts show them."""
    instance = task["instances"][0]
    if output_first:
        return (
            f"Task: {task['instruction']}\nClass label: {instance['output']}\nInput: {instance['input']}\n\n"
        )
    given = f"Input: {instance['input']}\n" if instance["input"].strip() else ""
    return f"Task: {task['instruction']}\n{given}Output: {instance['output']}\n\n"


class SelfInstruct:
    FIELDS = FIELDS

    def __init__(self, settings: Any, tokenizer: Any, seeds: list[dict[str, Any]]) -> None:
        self.s = settings
        self.total = settings.count
        self.seeds = seeds  # load_seed_tasks(settings.seed_tasks)
        self.machine: list[str] = []  # instructions kept so far, in data.jsonl's order
        self.by_kind = {k: [t for t in self.seeds if t["is_classification"] is k] for k in (True, False)}
        shots = [t for pair in zip(self.by_kind[False], self.by_kind[True], strict=False) for t in pair][
            : 2 * settings.classification_shots
        ]
        self.classify_prefix = CLASSIFY_HEADER + "".join(
            f"Task: {t['instruction']}\nIs it classification? {'Yes' if t['is_classification'] else 'No'}\n\n"
            for t in shots
        )
        self.ask = Sampling(
            settings.instruction_max_new_tokens,
            settings.instruction_temperature,
            settings.instruction_top_p,
            stop=["\n"],
        )
        self.judge = Sampling(3, 0.0, 1.0, stop=["\n"])
        # an instance ends at a blank line or the next task (first_part cuts there): no tokens spent past it
        self.instance = Sampling(
            settings.max_new_tokens, settings.temperature, settings.top_p, stop=["\n\n", "Task:"]
        )

    def batch(self, ids: range, batch: Batch) -> list[Candidate]:
        rng, s = batch.rng, self.s
        prompts = []
        for _ in ids:
            machine = rng.sample(self.machine, min(s.prompt_machine_tasks, len(self.machine)))
            wanted = s.prompt_seed_tasks + s.prompt_machine_tasks - len(machine)
            shown = [t["instruction"] for t in rng.sample(self.seeds, min(wanted, len(self.seeds)))] + machine
            rng.shuffle(shown)
            prompts.append(tasks_prompt(shown))
        candidates = []
        for i, text in zip(ids, batch.generate(prompts, self.ask), strict=True):
            c = Candidate(i)
            instruction = NUMBERED.sub("", text.strip()).strip()
            if not instruction:
                batch.drop(c, "empty:instruction", "the generator wrote no instruction")
                continue
            c.add("instruction", instruction)
            candidates.append(c)
        candidates = batch.filter(candidates, "instruction")

        asked = [
            self.classify_prefix + f"Task: {c.texts['instruction'][0]}\nIs it classification?"
            for c in candidates
        ]
        verdicts = batch.generate(asked, self.judge)
        classification = [v.strip().lower().startswith("yes") for v in verdicts]

        prompts = []
        for c, is_cls in zip(candidates, classification, strict=True):
            pool = self.by_kind[is_cls]
            shown = rng.sample(pool, min(s.instance_shots, len(pool)))
            header = OUTPUT_FIRST_HEADER if is_cls else INPUT_FIRST_HEADER
            body = "".join(demonstration(t, is_cls) for t in shown)
            prompts.append(header + body + f"Task: {c.texts['instruction'][0]}\n")
        kept = []
        for c, is_cls, text in zip(
            candidates, classification, batch.generate(prompts, self.instance), strict=True
        ):
            found = (OUTPUT_FIRST if is_cls else INPUT_FIRST).match(text.strip())
            output = first_part(found.group("output")) if found else ""
            given = first_part(found.group("input") or "") if found else ""
            if not output:
                kind = "class label and input" if is_cls else "output"
                batch.drop(c, "parse:instance", f"found no {kind} in {text.strip()[:80]!r}")
                continue
            if output == given:  # the paper's rule: an instance whose output repeats its input is invalid
                batch.drop(c, "parse:instance", f"the output repeats the input {given[:60]!r}")
                continue
            c.add("input", given)
            c.add("response", output)
            c.prompt = c.texts["instruction"][0] + (f"\n\n{given}" if given else "")
            c.row = {"instruction": c.texts["instruction"][0], "input": given, "output": output}
            c.row["is_classification"] = is_cls
            kept.append(c)
        kept = batch.filter(kept, "input")
        return batch.filter(kept, "response")

    def keep(self, kept: list[Candidate]) -> None:
        self.machine += [c.row["instruction"] for c in kept]

    def restore(self, rows: list[dict]) -> None:
        self.machine = [r["instruction"] for r in rows]

    def initial_texts(self) -> list[dict[str, list[str]]]:
        """The seed tasks' instructions start the pools: ROUGE-L is measured against them too."""
        return [{"instruction": [t["instruction"]]} for t in self.seeds]

    def texts_of(self, row: dict) -> dict[str, list[str]]:
        return {"instruction": [row["instruction"]], "input": [row["input"]], "response": [row["output"]]}

"""`python -m rlhf.synth`: the Magpie pre-query template read from chat templates, each filter on hand-written
rows, the three modes' rows in formats the trainer reads, a run killed with SIGKILL resumed to the same bytes,
a stalled batch retried smaller, and bad settings as one line each."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from rlhf.errors import Problems
from rlhf.synth import backends, chat, filters, magpie, self_instruct
from tests.conftest import ROOT, in_process


def _keep_redirected_streams_open() -> None:
    """rouge_score (the rouge filter) imports absl.logging, whose handler holds the sys.stderr of that moment
    (pytest's capture file). Hydra's logging.config.dictConfig in a later in-process run closes every handler
    it finds, and absl's closes its stream unless it is the current sys.stderr (then a StringIO): pytest's
    file would be closed under it. The handler writes to the process's own stderr instead."""
    from absl import logging as absl_logging

    absl_logging.get_absl_handler().python_handler.setStream(sys.__stderr__)


_keep_redirected_streams_open()

TINY = ["model=tiny", "hardware=cpu"]
MAGPIE = [*TINY, "synth.instruction_max_new_tokens=8", "synth.max_new_tokens=8"]
# gibberish from the random tiny model would fail the shipped filters: only the pools' filters stay, which
# gibberish passes, so the resume test rebuilds their pools too
POOLS = "synth.filters=[{name:exact_dedup},{name:near_dedup,threshold:0.9}]"

SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
LLAMA3_TEMPLATE = (
    "{{- bos_token }}{%- if messages[0]['role'] == 'system' %}{%- set system_message = messages[0]['content']"
    "|trim %}{%- set messages = messages[1:] %}{%- else %}{%- set system_message = '' %}{%- endif %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\n\n' }}{{- 'Cutting Knowledge Date: December 2023\n' }}"
    "{{- 'Today Date: 26 Jul 2024\n\n' }}{{- system_message }}{{- '<|eot_id|>' }}{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + "
    "'<|eot_id|>' }}{%- endfor %}{%- if add_generation_prompt %}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{%- endif %}"
)


@pytest.fixture(scope="module")
def synth_cli(cache_dir):
    """synth_cli(*args) -> CompletedProcess of `python -m rlhf.synth args...`, run in this process."""
    from rlhf import cli
    from rlhf.synth import __main__ as app

    def run(*args: str) -> subprocess.CompletedProcess:
        env = {"RLHF_CACHE_DIR": str(cache_dir), "NETRC": str(cache_dir / "no-netrc")}
        return in_process(lambda argv: cli.run(app.start, argv), list(args), env)

    return run


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from rlhf.models.sources import ASSETS

    return AutoTokenizer.from_pretrained(ASSETS / "tiny-tokenizer")


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


# --- the pre-query template, from three chat templates


def test_the_pre_query_template_is_the_tiny_template_up_to_a_user_message(tokenizer):
    assert chat.pre_query(tokenizer) == "<|im_start|>user\n"
    assert chat.end_of_turn_ids(tokenizer) == [tokenizer.convert_tokens_to_ids("<|im_end|>")]
    history = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    assert chat.pre_query(tokenizer, history, "Be brief.") == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\n"
    )


def test_smollm2s_pre_query_template_keeps_its_default_system_turn(tokenizer):
    tok = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    tok.chat_template = SMOLLM2_TEMPLATE
    assert chat.pre_query(tok) == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\n"
    )
    assert chat.pre_query(tok, system_prompt="You teach maths.") == (
        "<|im_start|>system\nYou teach maths.<|im_end|>\n<|im_start|>user\n"
    )


def test_a_llama3_pre_query_template_and_its_end_of_turn_token(tokenizer):
    tok = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    tok.add_special_tokens(
        {
            "bos_token": "<|begin_of_text|>",
            "additional_special_tokens": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
        }
    )
    tok.chat_template = LLAMA3_TEMPLATE
    assert chat.pre_query(tok) == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n"
        "Today Date: 26 Jul 2024\n\n<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n"
    )
    assert chat.end_of_turn_ids(tok)[0] == tok.convert_tokens_to_ids("<|eot_id|>")


# --- filters on hand-written rows


def pipeline(entries: list[dict], tokenizer=None, rewards=None, fields=magpie.FIELDS) -> filters.Pipeline:
    p = Problems()
    found = filters.parse(OmegaConf.create(entries), fields, p)
    assert p.lines == []
    return filters.Pipeline(found, tokenizer, rewards)


def run_filters(pipe, texts: list[str], on: str = "instruction", start: int = 0):
    candidates = []
    for i, text in enumerate(texts, start=start):
        c = filters.Candidate(i)
        c.add(on, text)
        c.prompt = "a prompt"
        candidates.append(c)
    dropped, rejected = Counter(), []
    kept = pipe.apply(candidates, on, dropped, rejected)
    return [c.texts[on][-1] for c in kept], dropped, rejected


def test_each_filter_drops_what_it_should_and_counts_it(tokenizer):
    pipe = pipeline(
        [
            {"name": "length", "field": "instruction", "min": 3, "max": 12},
            {"name": "length", "field": "instruction", "unit": "tokens", "max": 30},
            {"name": "ends_with_colon"},
            {"name": "leading_punctuation"},
            {"name": "non_english_start"},
            {"name": "blacklist"},
            {"name": "language", "languages": ["en"]},
            {"name": "exact_dedup"},
            {"name": "near_dedup", "threshold": 0.5},
        ],
        tokenizer,
    )
    texts = {
        "Write a short poem about the sea.": None,
        "Hi there": "length:instruction",
        "Explain in great detail every single step of how a modern car engine works please": "length:instruction",
        "supercalifragilisticexpialidocious antidisestablishmentarianism floccinaucinihilipilification": (
            "length:instruction#2"
        ),
        "List the following items for me:": "ends_with_colon:instruction",
        "- name three fruits you like": "leading_punctuation:instruction",
        "¿Qué hora es? Tell me the time": "non_english_start:instruction",
        "Draw a picture of a cat": "blacklist:instruction",
        "Schreibe ein kurzes Gedicht über das Meer": "language:instruction",
        "write a short  poem about the SEA.": "exact_dedup:instruction",
        "Please write a short poem about the sea.": "near_dedup:instruction",
        "Give three tips for staying focused while studying.": None,
    }
    kept, dropped, rejected = run_filters(pipe, list(texts))
    assert kept == [t for t, why in texts.items() if why is None]
    assert dropped == Counter(why for why in texts.values() if why)
    assert [r["filter"] for r in rejected] == [why for why in texts.values() if why]
    assert all(r["reason"] and r["texts"]["instruction"] for r in rejected)


def test_refusals_and_the_reward_threshold_read_the_response():
    from rlhf.rewards import Reward, keyword_reward

    pipe = pipeline(
        [{"name": "refusal"}, {"name": "repetition"}, {"name": "reward", "min_score": 0.0}],
        rewards=[Reward("keyword", keyword_reward(["happy"]), 1.0)],
    )
    texts = {
        "Sure! Here is a happy little poem.": None,
        "I'm sorry, but I can't help with that.": "refusal:response",
        "As an AI language model, I have no feelings.": "refusal:response",
        "Here is a poem about rain.": "reward:response",
        "A happy day. " + "Here is a step-by-step guide to help you. " * 6: "repetition:response",
        "A happy day: the sun, the sea, the sand, and the friends we made along the long way home.": None,
    }
    kept, dropped, _ = run_filters(pipe, list(texts), on="response")
    assert kept == [t for t, why in texts.items() if why is None]
    assert dropped == Counter(why for why in texts.values() if why)


def test_rouge_compares_with_the_seed_tasks_and_a_dropped_batch_leaves_the_pool():
    pipe = pipeline([{"name": "rouge", "threshold": 0.7}], fields=self_instruct.FIELDS)
    pipe.restore([{"instruction": ["Write a short poem about the ocean."]}])
    kept, dropped, _ = run_filters(pipe, ["Write a short poem about the sea.", "Name three capital cities."])
    assert kept == ["Name three capital cities."] and dropped == {"rouge:instruction": 1}
    pipe.settle(set())  # that batch kept nothing: its candidate leaves the pool again
    kept, _, _ = run_filters(pipe, ["Name three capital cities in Europe."], start=10)
    assert kept == ["Name three capital cities in Europe."]


@pytest.mark.parametrize(
    ("entry", "line"),
    [
        ({"name": "nope"}, "synth.filters[0].name=nope: unknown value; fix: choose one of: blacklist, "),
        (
            {"name": "length", "minimum": 3},
            "synth.filters[0].minimum=3: no such parameter of filter length; ",
        ),
        ({"name": "length", "min": "many"}, "synth.filters[0].min=many: wrong type"),
        (
            {"name": "length", "field": "output"},
            "synth.filters[0].field=output: not a field of this mode's rows",
        ),
        (
            {"name": "length", "unit": "chars"},
            "synth.filters[0].unit=chars: unknown value; fix: choose one of",
        ),
        ({"name": "near_dedup", "threshold": 2}, "synth.filters[0].threshold=2"),
    ],
)
def test_a_bad_filter_entry_names_its_key_and_the_valid_choices(entry, line):
    p = Problems()
    filters.parse(OmegaConf.create([entry]), magpie.FIELDS, p)
    assert len(p.lines) == 1 and p.lines[0].startswith(line), p.lines


def test_bad_settings_end_with_one_line_each(synth_cli, tmp_path):
    out = synth_cli(
        *MAGPIE, "synth.filters=[{name:lenght}]", "synth.turns=0", f"hydra.run.dir={tmp_path / 'r'}"
    )
    assert out.returncode == 2
    assert out.stderr.splitlines() == [
        "error: synth.turns=0: must be positive; fix: use e.g. turns=1",
        "error: synth.filters[0].name=lenght: unknown value; fix: choose one of: "
        + ", ".join(sorted(filters.FILTERS)),
    ]
    assert not (tmp_path / "r").exists()  # nothing that looks like a run stays
    out = synth_cli(*MAGPIE, "synth.backend=vllm", f"hydra.run.dir={tmp_path / 'v'}")
    assert out.returncode == 2 and out.stderr.count("error: ") == 1
    assert out.stderr.startswith("error: synth.backend=vllm: needs ")


# --- whole runs on the tiny model


@pytest.fixture(scope="module")
def magpie_run(synth_cli, tmp_path_factory) -> Path:
    """An uninterrupted magpie run: 12 candidates in batches of 2."""
    run_dir = tmp_path_factory.mktemp("synth") / "whole"
    args = [*MAGPIE, "synth.count=12", "synth.batch_size=2", "synth.checkpoint_every=4", POOLS]
    out = synth_cli(*args, f"hydra.run.dir={run_dir}")
    assert out.returncode == 0, out.stderr[-3000:]
    return run_dir


def test_a_magpie_run_writes_chat_rows_stats_and_a_card(magpie_run):
    rows = lines(magpie_run / "data.jsonl")
    stats = json.loads((magpie_run / "stats.json").read_text())
    assert stats["kept"] == len(rows) and stats["candidates"] == 12
    assert stats["kept"] + sum(stats["dropped_by"].values()) == 12
    assert all([m["role"] for m in r["messages"]] == ["user", "assistant"] for r in rows)
    assert set(stats["dropped_by"]) >= {"exact_dedup:instruction", "near_dedup:instruction"}
    assert stats["rows_per_s"] > 0 and stats["lengths"]["instruction"]["tokens"]["max"] > 0
    assert "## Dropped, by filter" in (magpie_run / "card.md").read_text()


def test_a_run_killed_with_sigkill_resumes_to_the_same_bytes(synth_cli, magpie_run, cache_dir, tmp_path):
    run_dir = tmp_path / "killed"
    args = [*MAGPIE, "synth.count=12", "synth.batch_size=2", "synth.checkpoint_every=4", POOLS]
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "rlhf.synth", *args, f"hydra.run.dir={run_dir}"],
        cwd=ROOT,
        env={**env, "RLHF_CACHE_DIR": str(cache_dir), "MKL_CBWR": "AUTO"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        state = run_dir / "state.json"
        if state.is_file() and json.loads(state.read_text())["done"] >= 4:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    assert not (run_dir / "stats.json").exists()
    assert 4 <= json.loads((run_dir / "state.json").read_text())["done"] < 12
    with (run_dir / "data.jsonl").open("a") as f:  # a row written after the last state, cut short
        f.write('{"messages": [{"role": "user", "con')

    out = synth_cli(f"resume={run_dir}")
    assert out.returncode == 0, out.stderr[-3000:]
    assert (run_dir / "data.jsonl").read_bytes() == (magpie_run / "data.jsonl").read_bytes()
    assert (run_dir / "rejected.jsonl").read_bytes() == (magpie_run / "rejected.jsonl").read_bytes()
    assert json.loads((run_dir / "stats.json").read_text())["resumes"] == 1
    out = synth_cli(f"resume={run_dir}")
    assert out.returncode == 0 and "the run is finished (stats.json)" in out.stdout
    out = synth_cli(f"resume={run_dir}", "seed=7")
    assert out.returncode == 2 and out.stderr.startswith("error: seed=7: would change the rows")


def test_sigint_stops_at_a_batch_boundary_and_says_how_to_resume(synth_cli, magpie_run, tmp_path):
    run_dir = tmp_path / "stopped"

    def interrupt_when_4_are_done():
        deadline = time.time() + 60
        while time.time() < deadline:
            state = run_dir / "state.json"
            if state.is_file() and json.loads(state.read_text())["done"] >= 4:
                os.kill(os.getpid(), signal.SIGINT)
                return
            time.sleep(0.01)

    threading.Thread(target=interrupt_when_4_are_done, daemon=True).start()
    args = [*MAGPIE, "synth.count=12", "synth.batch_size=2", "synth.checkpoint_every=4", POOLS]
    out = synth_cli(*args, f"hydra.run.dir={run_dir}")
    assert out.returncode == 128 + signal.SIGINT, out.stderr[-3000:]
    record = json.loads((run_dir / "interrupted.json").read_text())
    assert record["resume"] == f"python -m rlhf.synth resume={run_dir}" and record["done"] % 2 == 0
    assert f"continue with: python -m rlhf.synth resume={run_dir}" in out.stderr
    state = json.loads((run_dir / "state.json").read_text())
    assert state["stopped_by"] == "SIGINT" and state["data_bytes"] == (run_dir / "data.jsonl").stat().st_size
    out = synth_cli(f"resume={run_dir}")
    assert out.returncode == 0, out.stderr[-3000:]
    assert (run_dir / "data.jsonl").read_bytes() == (magpie_run / "data.jsonl").read_bytes()
    assert not (run_dir / "interrupted.json").exists()


def test_a_stalled_batch_is_retried_at_half_the_size(synth_cli, monkeypatch, tmp_path):
    from rlhf.synth.loop import derive

    real = backends.Transformers.generate
    calls: list[list[str]] = []
    release = threading.Event()
    batch_1_first_call = derive(derive(42, 1), 0, 0)  # seed=42, batch 1, its first call, offset 0

    def hangs_once(self, prompts, sampling, seed, heartbeat):
        calls.append(prompts)
        if seed == batch_1_first_call and len(prompts) == 4:  # no token until the test ends
            release.wait(60)
        return real(self, prompts, sampling, seed, heartbeat)

    monkeypatch.setattr(backends.Transformers, "generate", hangs_once)
    run_dir = tmp_path / "stalled"
    try:
        out = synth_cli(*MAGPIE, "synth.count=8", "synth.batch_size=4", "synth.stall_s=3", "synth.filters=[]",
                        f"hydra.run.dir={run_dir}")  # fmt: skip
    finally:
        release.set()  # the abandoned call returns (its result is never read) and stops at its first step
    assert out.returncode == 0, out.stderr[-3000:]
    assert "batch 1: no progress for 3 s at batch size 4; retrying at 2" in out.stderr
    stats = json.loads((run_dir / "stats.json").read_text())
    assert stats["retries"] == 1 and stats["stalls"] == [{"batch": 1, "batch_size": 4}]
    assert stats["final_batch_size"] == 2 and stats["kept"] == len(lines(run_dir / "data.jsonl")) == 8
    assert calls[0] == ["<|im_start|>user\n"] * 4  # Magpie: the pre-query template alone
    assert all(len(c) <= 2 for c in calls[3:])


def test_a_preference_run_keeps_only_pairs_the_reward_tells_apart(synth_cli, tmp_path):
    vocab = json.loads((ROOT / "rlhf/assets/tiny-tokenizer/tokenizer.json").read_text())["model"]["vocab"]
    # words the random tiny model writes in about half its answers: a keyword reward that differs
    words = sorted(t[1:] for t in vocab if t.startswith("Ġ") and t[1:].isascii() and t[1:].isalpha())
    words = [w for w in words if w.islower() and len(w) > 3][::4]
    run_dir = tmp_path / "pairs"
    out = synth_cli(*TINY, "synth=preferences", "synth.count=8", "synth.max_new_tokens=12", "synth.filters=[]",
                    f"reward.words=[{','.join(words)}]", f"hydra.run.dir={run_dir}")  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    rows = lines(run_dir / "data.jsonl")
    assert rows and all(r["chosen_score"] > r["rejected_score"] for r in rows)
    assert all(max(r["scores"]) == r["chosen_score"] for r in rows)
    for r in lines(run_dir / "rejected.jsonl"):
        assert r["filter"] == "margin" and len(set(r["row"]["scores"])) == 1
    from rlhf import data
    from rlhf.schema import DataConfig

    loaded = data.load(
        OmegaConf.structured(DataConfig(name="x", path=str(run_dir / "data.jsonl"))), ("preference",), "dpo"
    )
    assert loaded.format == "preference" and loaded.style == "conversational"


def test_self_instruct_bootstraps_classifies_and_filters(synth_cli, monkeypatch, tmp_path):
    """The generator is scripted (the random tiny model writes no instructions): what the loop asks of it and
    what becomes of its answers."""
    invented = iter(
        ["Classify the colour of the sky as day or night", "Name three rivers in Africa.", "Draw a map of a town.",
         "Name three rivers in Africa.", "Suggest a name for a pet turtle.", "Classify the fruit as sweet or sour"]
    )  # fmt: skip
    asked: list[str] = []

    def scripted(self, prompts, sampling, seed, heartbeat):
        out = []
        for p in prompts:
            if p.startswith(self_instruct.TASKS_HEADER):
                asked.append(p)
                out.append(f" {next(invented)}")
            elif p.startswith(self_instruct.CLASSIFY_HEADER):
                out.append(" Yes" if p.rsplit("Task: ", 1)[1].startswith("Classify") else " No")
            elif p.startswith(self_instruct.OUTPUT_FIRST_HEADER):
                out.append("Class label: day\nInput: The sun is high.\n\n")
            else:
                out.append("Output: The Nile, the Congo and the Niger.\n\n")
        return out

    monkeypatch.setattr(backends.Transformers, "generate", scripted)
    run_dir = tmp_path / "self-instruct"
    out = synth_cli(
        *TINY, "synth=self-instruct", "synth.count=6", "synth.batch_size=3", f"hydra.run.dir={run_dir}"
    )
    assert out.returncode == 0, out.stderr[-3000:]
    rows = lines(run_dir / "data.jsonl")
    assert [r["instruction"] for r in rows] == [
        "Classify the colour of the sky as day or night",
        "Name three rivers in Africa.",
        "Suggest a name for a pet turtle.",
        "Classify the fruit as sweet or sour",
    ]
    assert [r["is_classification"] for r in rows] == [True, False, False, True]
    assert rows[0]["output"] == "day" and rows[0]["input"] == "The sun is high."
    assert rows[1]["output"] == "The Nile, the Congo and the Niger." and rows[1]["input"] == ""
    stats = json.loads((run_dir / "stats.json").read_text())
    assert stats["dropped_by"]["blacklist:instruction"] == 1 and stats["dropped_by"]["rouge:instruction"] == 1
    numbered = [line for line in asked[-1].splitlines()[1:] if line[:1].isdigit()]
    assert len(numbered) == 9 and numbered[-1] == "9."  # 8 instructions, then the model's turn
    assert sum(line.split(". ", 1)[1] in {r["instruction"] for r in rows[:2]} for line in numbered[:-1]) == 2


def test_the_trainer_trains_on_a_synth_run_as_it_is(rlhf_cli, magpie_run, tmp_path):
    out = rlhf_cli(f"data.path={magpie_run / 'data.jsonl'}", *TINY, "eval=none", "logger=none",
                   "method.max_steps=2", f"hydra.run.dir={tmp_path / 'train'}")  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads((tmp_path / "train" / "summary.json").read_text())["steps"] == 2


def test_a_reward_model_without_a_chat_template_reads_reward_template(tokenizer):
    from rlhf import rewards

    plain = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    plain.chat_template = None  # e.g. a DeBERTa reward model
    assert rewards._chat_text(plain, "Why?", "Because.", "{prompt}\n\n{answer}") == "Why?\n\nBecause."
    chat_text = rewards._chat_text(tokenizer, "Why?", "Because.", "{prompt}\n\n{answer}")
    assert chat_text == rewards._chat_text(tokenizer, "Why?", "Because.")  # a template's format is kept
    assert chat_text.startswith("<|im_start|>user\nWhy?<|im_end|>")

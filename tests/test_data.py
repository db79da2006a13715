"""Loaders: every TRL type and house format becomes the rows the trainer takes; the shipped sets are what we promise."""

from __future__ import annotations

import json
import re

import pytest

from rlhf import data, methods
from rlhf.errors import UserError

SFT = methods.get("sft").DATA_FORMATS


def test_shipped_sets_have_the_promised_size_and_format(make_cfg):
    sizes = {}
    for name in ("instructions", "question-decomposition", "chat"):
        loaded = data.load(make_cfg(f"data={name}", "data.max_samples=0").data, SFT, "lora")
        sizes[name] = (loaded.format, len(loaded.rows))
    assert sizes["instructions"][0] == "alpaca" and sizes["instructions"][1] >= 200
    assert (
        sizes["question-decomposition"][0] == "question_decomposition"
        and sizes["question-decomposition"][1] >= 100
    )
    assert sizes["chat"][0] == "chat" and sizes["chat"][1] >= 50


def test_shipped_preferences_have_a_disjoint_heldout_split(make_cfg):
    cfg = make_cfg("data=preferences").data
    train = data.load(cfg, ("preference",), "dpo")
    heldout = data.load(cfg, ("preference",), "dpo", "eval_path")
    assert len(train.rows) >= 200 and len(heldout.rows) >= 40
    prompts = {r["prompt"][0]["content"] for r in train.rows}
    assert not prompts & {r["prompt"][0]["content"] for r in heldout.rows}
    assert all(r["chosen"][0]["role"] == r["rejected"][0]["role"] == "assistant" for r in train.rows)


def test_shipped_instruction_set_has_a_disjoint_heldout_file(make_cfg):
    cfg = make_cfg().data
    train = data.load(cfg, SFT, "lora")
    heldout = data.load(cfg, SFT, "lora", "eval_path")
    assert len(heldout.rows) >= 30
    prompts = {r["prompt"][0]["content"] for r in train.rows}
    assert not prompts & {r["prompt"][0]["content"] for r in heldout.rows}
    assert make_cfg("data.path=instructions.jsonl").data.eval_path == ""  # a user's file has none of its own


def test_eval_fraction_holds_out_the_same_rows_for_the_same_seed(make_cfg):
    cfg = make_cfg("data.eval_path=", "data.eval_fraction=0.2", "data.max_samples=50").data
    loaded = data.load(cfg, SFT, "lora")
    first = data.load_heldout(cfg, loaded, SFT, "lora", seed=1)
    again = data.load_heldout(cfg, loaded, SFT, "lora", seed=1)
    other = data.load_heldout(cfg, loaded, SFT, "lora", seed=2)
    train, heldout = first
    assert (len(train.rows), len(heldout.rows)) == (40, 10)
    assert again[1].rows == heldout.rows and other[1].rows != heldout.rows
    text = [json.dumps(r) for r in loaded.rows]
    assert sorted(text) == sorted(json.dumps(r) for r in train.rows + heldout.rows)  # no row lost or repeated
    assert [text.index(json.dumps(r)) for r in train.rows] == sorted(
        text.index(json.dumps(r)) for r in train.rows
    )


def test_seed_000_prompts(make_cfg):
    loaded = data.load(make_cfg("data=sentiment-prompts").data, ("prompts",), "ppo")
    assert [r["prompt"][0]["content"] for r in loaded.rows] == ["I feel so", "This makes me", "I am really"]


def test_shipped_instruction_rows_are_distinct():
    rows = [json.loads(line) for line in (data.SHIPPED / "instructions.jsonl").read_text().splitlines()]
    assert len({(r["instruction"], r["input"]) for r in rows}) == len(rows)


def test_alpaca_row_becomes_a_user_prompt_and_an_assistant_completion(make_cfg, tmp_path):
    f = tmp_path / "a.jsonl"
    f.write_text(json.dumps({"instruction": "Fix this.", "input": "teh cat", "output": "the cat"}) + "\n")
    (row,) = data.load(make_cfg(f"data.path={f}").data, SFT, "lora").rows
    assert row == {
        "prompt": [{"role": "user", "content": "Fix this.\n\nteh cat"}],
        "completion": [{"role": "assistant", "content": "the cat"}],
    }


def test_question_decomposition_json_and_jsonl_load_the_same(make_cfg, tmp_path):
    records = [
        {"question": "Q1?", "sub_questions": ["a?", "b?"]},
        {"question": "Q2?", "sub_questions": ["c?"]},
    ]
    (tmp_path / "qd.json").write_text(json.dumps(records, indent=2))
    (tmp_path / "qd.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    as_json = data.load(
        make_cfg("data=question-decomposition", f"data.path={tmp_path}/qd.json").data, SFT, "lora"
    )
    as_jsonl = data.load(
        make_cfg("data=question-decomposition", f"data.path={tmp_path}/qd.jsonl").data, SFT, "lora"
    )
    assert as_json.rows == as_jsonl.rows
    first = as_json.rows[0]
    assert first["prompt"][0]["content"] == "Break this question into simpler sub-questions:\nQ1?"
    assert first["completion"][0]["content"] == "1. a?\n2. b?"


def test_multi_turn_chat_trains_on_every_assistant_turn(make_cfg, tmp_path):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Bye"},
        {"role": "assistant", "content": "Goodbye."},
    ]
    f = tmp_path / "c.jsonl"
    f.write_text(json.dumps({"messages": messages}) + "\n")
    rows = data.load(make_cfg("data=chat", f"data.path={f}").data, SFT, "lora").rows
    assert [r["completion"][0]["content"] for r in rows] == ["Hello.", "Goodbye."]
    assert rows[1]["prompt"] == messages[:4]


def test_json_syntax_error_names_file_and_line(make_cfg, tmp_path):
    f = tmp_path / "broken.json"
    f.write_text('[\n  {"question": "q?", "sub_questions": ["a?"]},\n  {"question": \n]')
    with pytest.raises(UserError, match=r"broken.json:4: not valid JSON"):
        data.load(make_cfg("data=question-decomposition", f"data.path={f}").data, SFT, "lora")


def test_max_samples_and_sample_prompts(make_cfg):
    cfg = make_cfg("data=question-decomposition", "data.max_samples=7").data
    loaded = data.load(cfg, SFT, "lora")
    assert len(loaded.rows) == 7
    prompts = data.sample_prompts(cfg, loaded)
    # sample prompts are wrapped exactly like training prompts of the format
    assert prompts[0][0]["content"].startswith("Break this question into simpler sub-questions:\n")
    assert len(prompts) == len(cfg.sample_prompts)


def test_the_shipped_instruction_set_trains_on_its_first_rows_and_a_users_file_on_all(make_cfg, tmp_path):
    default = data.load(make_cfg().data, SFT, "lora").rows
    every = data.load(make_cfg("data.max_samples=0").data, SFT, "lora").rows
    assert len(default) == 80 and len(every) > 200 and default == every[:80]
    own = tmp_path / "own.jsonl"
    own.write_text("".join(json.dumps({"instruction": f"q{i}", "output": f"a{i}"}) + "\n" for i in range(90)))
    assert len(data.load(make_cfg(f"data.path={own}").data, SFT, "lora").rows) == 90


def test_unpaired_rows_a_user_writes_are_detected_and_labelled(make_cfg, tmp_path):
    f = tmp_path / "feedback.jsonl"
    records = [
        {"prompt": "Say hi.", "completion": "Hi!", "label": True},
        {"prompt": "Say hi.", "completion": "Go away.", "label": False},
        {"prompt": "Add 2 and 2.", "completion": "4", "label": 1},
        {"prompt": "Add 2 and 2.", "completion": "5", "label": 0},
    ]
    f.write_text("".join(json.dumps(r) + "\n" for r in records))
    loaded = data.load(make_cfg(f"data.path={f}").data, ("unpaired",), "kto")  # data.format=auto
    assert loaded.format == "unpaired" and loaded.style == "standard"
    # TRL's standard unpaired rows, as they are (the label as a bool)
    assert loaded.rows[0] == {"prompt": "Say hi.", "completion": "Hi!", "label": True}
    assert [r["label"] for r in loaded.rows] == [True, False, True, False]
    # data.as_chat=true makes the strings chat turns
    chat = data.load(make_cfg(f"data.path={f}", "data.as_chat=true").data, ("unpaired",), "kto")
    assert chat.rows[0] == {
        "prompt": [{"role": "user", "content": "Say hi."}],
        "completion": [{"role": "assistant", "content": "Hi!"}],
        "label": True,
    }
    # a prompt alone is still the prompts format: the unpaired signature is checked first, not instead
    assert data.formats.detect({"prompt": "p"}, "x")[0] == "prompts"
    assert data.formats.detect(records[0], "x")[0] == "unpaired"


@pytest.mark.parametrize("label", ['"yes"', "2", "null", "0.5"])
def test_a_bad_unpaired_label_names_file_and_line(make_cfg, tmp_path, label):
    f = tmp_path / "bad.jsonl"
    f.write_text(
        '{"prompt": "p", "completion": "c", "label": true}\n\n'
        f'{{"prompt": "p", "completion": "c", "label": {label}}}\n'
    )
    with pytest.raises(UserError) as e:
        data.load(make_cfg(f"data.path={f}").data, ("unpaired",), "kto")
    assert str(e.value) == (
        f"{f}:3: 'label' must be true / false (or 1 / 0) for unpaired data, got {label}; "
        "fix: that row (true: a desirable completion)"
    )


def test_shipped_unpaired_set_is_the_preference_pairs_unpaired(make_cfg):
    for key in ("path", "eval_path"):  # the training set and the held-out one
        rows = data.load(make_cfg("data=unpaired").data, ("unpaired",), "kto", key).rows
        pairs = data.load(make_cfg("data=preferences").data, ("preference",), "dpo", key).rows
        assert len(rows) == 2 * len(pairs)
        assert rows[0::2] == [
            {"prompt": p["prompt"], "completion": p["chosen"], "label": True} for p in pairs
        ]
        assert rows[1::2] == [
            {"prompt": p["prompt"], "completion": p["rejected"], "label": False} for p in pairs
        ]


# --------------------------------------------------------------------------- every TRL type, as a user writes it

USER = [{"role": "user", "content": "What is 2+2?"}]
FOUR, FIVE = [{"role": "assistant", "content": "4"}], [{"role": "assistant", "content": "5"}]
# (format, a record as a user writes it): each passes to the trainer as it is
AS_THEY_ARE = [
    ("text", {"text": "The sky is blue."}),
    ("prompt_completion", {"prompt": "The sky is", "completion": " blue."}),
    ("prompt_completion", {"prompt": USER, "completion": FOUR}),
    ("preference", {"prompt": "2+2=", "chosen": "4", "rejected": "5"}),
    ("preference", {"prompt": USER, "chosen": FOUR, "rejected": FIVE}),
    ("unpaired", {"prompt": "2+2=", "completion": "4", "label": True}),
    ("unpaired", {"prompt": USER, "completion": FIVE, "label": False}),
    ("prompts", {"prompt": USER}),
]


def jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def accepts(fmt):
    return tuple({f for m in data.methods_taking(fmt) for f in methods.get(m).DATA_FORMATS})


@pytest.mark.parametrize("fmt,record", AS_THEY_ARE, ids=[f"{f}-{i}" for i, (f, _) in enumerate(AS_THEY_ARE)])
def test_trl_rows_reach_the_trainer_as_they_are(make_cfg, tmp_path, fmt, record):
    from trl.data_utils import is_conversational

    f = jsonl(tmp_path / "rows.jsonl", [record, record])
    loaded = data.load(make_cfg(f"data.path={f}").data, accepts(fmt), "any")
    assert loaded.format == fmt and loaded.rows == [record, record]
    assert loaded.detected_by == sorted(record)
    assert (loaded.style == "conversational") == is_conversational(record)  # TRL's own test agrees


def test_prompt_strings_become_a_user_turn_and_query_is_a_prompt(make_cfg, tmp_path):
    f = jsonl(tmp_path / "p.jsonl", [{"prompt": "I feel so"}, {"query": "This makes me"}])
    rows = data.load(make_cfg(f"data.path={f}").data, ("prompts",), "grpo").rows
    assert rows == [{"prompt": [{"role": "user", "content": t}]} for t in ("I feel so", "This makes me")]


def test_implicit_prompt_is_recovered_from_strings_and_from_messages(make_cfg, tmp_path):
    from trl.data_utils import extract_prompt

    hh = {
        "chosen": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Name a colour\n\nAssistant: Blue is nice.",
        "rejected": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Name a colour\n\nAssistant: Blue? No idea.",
    }
    plain = {"chosen": "The capital of France is Paris.", "rejected": "The capital of France is Rome."}
    chat = {"chosen": USER + FOUR, "rejected": USER + FIVE}
    f = jsonl(tmp_path / "hh.jsonl", [hh, plain])
    rows = data.load(make_cfg(f"data.path={f}").data, ("implicit_preference",), "dpo").rows
    # the prompt ends with the last shared turn header, not inside the answers' shared "Blue"
    assert rows[0] == {
        "prompt": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Name a colour\n\nAssistant:",
        "chosen": " Blue is nice.",
        "rejected": " Blue? No idea.",
    }
    # no turn headers: the longest common prefix, cut at a whitespace boundary
    assert rows[1] == {"prompt": "The capital of France is", "chosen": " Paris.", "rejected": " Rome."}
    g = jsonl(tmp_path / "chat.jsonl", [chat])
    (row,) = data.load(make_cfg(f"data.path={g}").data, ("implicit_preference",), "dpo").rows
    assert row == {"prompt": USER, "chosen": FOUR, "rejected": FIVE} == extract_prompt(chat)


def test_sharegpt_and_alpaca_system_and_history(make_cfg, tmp_path):
    share = {
        "system": "Be brief.",
        "conversations": [
            {"from": "human", "value": "Hi"},
            {"from": "gpt", "value": "Hello."},
            {"from": "human", "value": "Bye"},
            {"from": "gpt", "value": "Goodbye."},
        ],
    }
    rows = data.load(make_cfg(f"data.path={jsonl(tmp_path / 's.jsonl', [share])}").data, SFT, "sft").rows
    system = {"role": "system", "content": "Be brief."}
    assert [r["completion"] for r in rows] == [
        [{"role": "assistant", "content": "Hello."}],
        [{"role": "assistant", "content": "Goodbye."}],
    ]
    assert rows[1]["prompt"] == [
        system,
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Bye"},
    ]
    alpaca = {"instruction": "And 3+3?", "output": "6", "system": "Be brief.", "history": [["2+2?", "4"]]}
    (row,) = data.load(make_cfg(f"data.path={jsonl(tmp_path / 'a.jsonl', [alpaca])}").data, SFT, "sft").rows
    assert row == {
        "prompt": [
            system,
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4"},
            {"role": "user", "content": "And 3+3?"},
        ],
        "completion": [{"role": "assistant", "content": "6"}],
    }


def test_csv_parquet_a_directory_and_a_glob_load_the_same_rows(make_cfg, tmp_path):
    import pandas as pd

    records = [{"prompt": f"p{i}", "completion": f"c{i}"} for i in range(5)]
    frame = pd.DataFrame(records)
    (tmp_path / "d").mkdir()
    frame.to_csv(tmp_path / "rows.csv", index=False)
    frame.to_parquet(tmp_path / "rows.parquet")
    jsonl(tmp_path / "d" / "a.jsonl", records[:2])
    jsonl(tmp_path / "d" / "b.jsonl", records[2:])
    for path in ("rows.csv", "rows.parquet", "d", "d/*.jsonl"):
        loaded = data.load(make_cfg(f"data.path={tmp_path}/{path}").data, ("prompt_completion",), "sft")
        assert loaded.rows == records, path


def test_data_columns_rename_a_sources_columns(make_cfg, tmp_path):
    import pandas as pd

    pd.DataFrame({"question": ["2+2?"], "answer": ["4"]}).to_csv(tmp_path / "qa.csv", index=False)
    cfg = make_cfg(f"data.path={tmp_path}/qa.csv", "data.columns={question:prompt,answer:completion}").data
    assert data.load(cfg, ("prompt_completion",), "sft").rows == [{"prompt": "2+2?", "completion": "4"}]
    pd.DataFrame({"q": ["2+2?", "3+3?"], "a": ["4", "7"], "ok": [True, False]}).to_csv(
        tmp_path / "u.csv", index=False
    )
    cfg = make_cfg(f"data.path={tmp_path}/u.csv", "data.columns={q:prompt,a:completion,ok:label}").data
    rows = data.load(cfg, ("unpaired",), "kto").rows
    assert rows == [
        {"prompt": "2+2?", "completion": "4", "label": True},
        {"prompt": "3+3?", "completion": "7", "label": False},
    ]
    cfg = make_cfg(f"data.path={tmp_path}/qa.csv", "data.columns={query:prompt}").data
    with pytest.raises(UserError, match=r"qa.csv:2: data.columns renames query, which the data lacks"):
        data.load(cfg, ("prompt_completion",), "sft")


def test_too_long_rows_are_truncated_or_dropped_and_counted(make_cfg, tmp_path):
    from rlhf.data import lengths

    tokenizer = data.tokenizer_for(make_cfg("model=tiny").model, "")
    long = "word " * 100
    f = jsonl(
        tmp_path / "sft.jsonl",
        [
            {"prompt": "Q", "completion": long},
            {"prompt": "Q", "completion": "A"},
            {"prompt": long, "completion": "A"},
        ],
    )
    sft = data.load(
        make_cfg(f"data.path={f}").data, ("prompt_completion",), "sft", tokenizer=tokenizer, max_length=32
    )
    # truncate (SFT's default): the trainer cuts the long answer; a prompt filling the window is dropped
    assert (len(sft.rows), sft.truncated, sft.dropped) == (2, 1, {"prompt_too_long": 1})
    assert sft.lengths[0] > 32 >= sft.lengths[1]
    g = jsonl(
        tmp_path / "pref.jsonl",
        [
            {"prompt": "Q", "chosen": long, "rejected": "no"},
            {"prompt": "Q", "chosen": "yes", "rejected": "no"},
        ],
    )
    pref = data.load(
        make_cfg(f"data.path={g}").data, ("preference",), "dpo", tokenizer=tokenizer, max_length=32
    )
    assert (len(pref.rows), pref.truncated, pref.dropped) == (
        1,
        0,
        {"too_long": 1},
    )  # drop: preference's default
    kept = data.load(
        make_cfg(f"data.path={g}", "data.too_long=truncate").data,
        ("preference",),
        "dpo",
        tokenizer=tokenizer,
        max_length=32,
    )
    assert (len(kept.rows), kept.truncated) == (2, 1)
    assert lengths.percentiles([1, 2, 3, 4]) == {"p50": 2, "p90": 4, "p99": 4, "max": 4}


def test_a_data_set_left_with_no_rows_is_one_line(make_cfg, tmp_path):
    tokenizer = data.tokenizer_for(make_cfg("model=tiny").model, "")
    f = jsonl(tmp_path / "long.jsonl", [{"prompt": "Q", "chosen": "word " * 50, "rejected": "no " * 50}])
    with pytest.raises(UserError) as e:
        data.load(make_cfg(f"data.path={f}").data, ("preference",), "dpo", tokenizer=tokenizer, max_length=16)
    assert str(e.value).startswith(
        f"data.path={f}: every row is longer than hardware.max_seq_length=16 tokens"
    )
    assert "\n" not in str(e.value) and "fix: raise hardware.max_seq_length" in str(e.value)


def test_a_non_utf8_file_names_the_file_and_byte_offset(make_cfg, tmp_path):
    for name in ("latin.jsonl", "latin.csv"):
        f = tmp_path / name
        good = '{"text": "ok"}\n' if name.endswith(".jsonl") else "text\nok\n"
        f.write_bytes(good.encode() + '{"text": "caf\xe9"}\n'.encode("latin-1"))
        with pytest.raises(UserError) as e:
            data.load(make_cfg(f"data.path={f}").data, ("text",), "sft")
        assert str(e.value).startswith(f"{f}: not UTF-8 text (byte 0xe9 at offset {len(good) + 13}")


def test_data_a_method_cannot_take_names_the_methods_that_can(make_cfg, tmp_path):
    f = jsonl(tmp_path / "hh.jsonl", [{"chosen": "Q: a", "rejected": "Q: b"}])
    with pytest.raises(UserError) as e:
        data.load(make_cfg(f"data.path={f}").data, SFT, "sft")
    takers = [n for n, m in methods.registry().items() if "implicit_preference" in m.DATA_FORMATS]
    assert takers == ["dpo", "rm"]
    assert str(e.value).endswith("or a method that takes it: " + ", ".join(f"method={t}" for t in takers))


def test_the_preview_of_a_shipped_set_and_of_a_users_file(tmp_path):
    from rlhf import cli
    from rlhf.data import __main__ as command
    from tests.conftest import in_process

    def preview(*args):
        out = in_process(
            lambda argv: cli.run(command.preview, argv),
            ["model=tiny", *args],
            {"RLHF_CACHE_DIR": str(tmp_path)},
        )
        assert out.returncode == 0, out.stderr
        return out.stdout

    shipped = preview("method=dpo")
    assert "format: preference, detected from the keys chosen, prompt, rejected" in shipped
    assert "strings as chat turns (data.as_chat=true)" in shipped
    assert re.search(r"rows: train \d{3} \(from \d{3} records\), held-out \d{2}, dropped 0", shipped)
    assert re.search(r"tokens per row .*: p50 \d+, p90 \d+, p99 \d+, max \d+", shipped)
    assert "--- row 1, chosen," in shipped and "--- row 2, rejected," in shipped
    assert "<|im_start|>assistant\n⟦" in shipped  # the chat template applied, the answer marked
    f = jsonl(
        tmp_path / "mine.jsonl",
        [{"prompt": "The sky is", "completion": " blue."}, {"prompt": "Q", "completion": "word " * 600}],
    )
    mine = preview(f"data.path={f}", "method=sft")
    assert (
        "format: prompt_completion, detected from the keys completion, prompt; standard rows as TRL takes them"
        in mine
    )
    assert "rows: train 2 (from 2 records), held-out 0, dropped 0" in mine
    assert "1 truncated by the trainer" in mine
    assert "The sky is⟦ blue.<|im_end|>⟧" in mine  # a standard completion with the EOS TRL appends
    assert "\nModel" not in mine and not (tmp_path / "models").exists()  # no weights built or loaded


# (method, a file's rows): one real training step for each new type, standard and conversational
TRAINS = [
    ("sft", [{"text": f"Count: {i} {i + 1} {i + 2}"} for i in range(4)]),
    ("sft", [{"prompt": f"{i}+{i}=", "completion": f" {2 * i}"} for i in range(4)]),
    (
        "sft",
        [
            {"conversations": [{"from": "human", "value": f"say {i}"}, {"from": "gpt", "value": f"{i}"}]}
            for i in range(4)
        ],
    ),
    (
        "dpo",
        [
            {
                "chosen": f"\n\nHuman: say {i}\n\nAssistant: {i}",
                "rejected": f"\n\nHuman: say {i}\n\nAssistant: no",
            }
            for i in range(4)
        ],
    ),
    ("rm", [{"prompt": USER, "chosen": FOUR, "rejected": FIVE} for _ in range(4)]),
    ("kto", [{"prompt": USER, "completion": a, "label": a == FOUR} for a in (FOUR, FIVE, FOUR, FIVE)]),
    (
        "grpo",
        [{"prompt": [{"role": "user", "content": f"I feel {w}"}]} for w in ("so", "very", "quite", "rather")],
    ),
]


@pytest.mark.parametrize("method,records", TRAINS, ids=[f"{m}-{i}" for i, (m, _) in enumerate(TRAINS)])
def test_each_new_type_trains_one_step_on_the_tiny_model(rlhf_cli, tmp_path, method, records):
    f = jsonl(tmp_path / "rows.jsonl", records)
    out = rlhf_cli(
        "model=tiny",
        f"method={method}",
        f"data.path={f}",
        "data.eval_path=",
        "method.max_steps=1",
        "eval=none",
        "logger=none",
        f"hydra.run.dir={tmp_path}/r",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads((tmp_path / "r" / "summary.json").read_text())

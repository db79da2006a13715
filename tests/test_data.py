"""Loaders: every format converts to prompt/completion messages; the shipped sets are what we promise."""

from __future__ import annotations

import json

import pytest

from rlhf import data
from rlhf.errors import UserError

SFT = ("alpaca", "chat", "question_decomposition")


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
    assert loaded.format == "unpaired"
    assert loaded.rows[0] == {
        "prompt": [{"role": "user", "content": "Say hi."}],
        "completion": [{"role": "assistant", "content": "Hi!"}],
        "label": True,
    }
    assert [r["label"] for r in loaded.rows] == [True, False, True, False]
    # a prompt alone is still the prompts format: the unpaired signature is checked first, not instead
    assert data._detect({"prompt": "p"}, "x") == "prompts"
    assert data._detect(records[0], "x") == "unpaired"


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

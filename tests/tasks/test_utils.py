"""The checkers behind the eval=quick tasks: each instruction type, the seed-000 and seed-003 scorers."""

from __future__ import annotations

import json

import pytest

from rlhf.tasks import utils


@pytest.mark.parametrize(
    ("instruction", "kept", "broken"),
    [
        ({"type": "lowercase"}, "all small letters here.", "One Capital"),
        ({"type": "bullet_count", "n": 3}, "Tips:\n- water\n- light\n* soil", "- water\n- light"),
        ({"type": "include_word", "word": "lantern"}, "A Lantern glows.", "A lanterns glow."),
        ({"type": "avoid_word", "word": "party"}, "Come to dinner.", "Come to the Party!"),
        ({"type": "max_words", "n": 5}, "one two three four five", "one two three four five six"),
        ({"type": "min_words", "n": 3}, "one two three", "one two"),
        ({"type": "json_output"}, '```json\n{"a": [1, 2]}\n```', "a: 1"),
        ({"type": "end_with", "phrase": "See you soon."}, "Bye. See you soon.", "See you soon. Bye."),
        ({"type": "start_with", "phrase": "Dear team"}, "Dear team, hello", "Hello, dear team"),
        ({"type": "no_commas"}, "No commas at all.", "Yes, one comma."),
    ],
)
def test_each_instruction_type_is_checked_both_ways(instruction, kept, broken):
    assert utils.follows(instruction, kept)
    assert not utils.follows(instruction, broken)


def test_every_shipped_prompt_uses_a_known_instruction_and_prompt_level_needs_all():
    rows = utils.instruction_following()["test"]
    assert len(rows) >= 50
    for row in rows:
        for instruction in json.loads(row["instructions"]):
            utils.follows(instruction, "x")  # raises on a type without a checker
    doc = {"instructions": json.dumps([{"type": "lowercase"}, {"type": "max_words", "n": 2}])}
    assert utils.instruction_following_results(doc, ["two words"]) == {
        "prompt_level_acc": True,
        "inst_level_acc": [True, True],
    }
    assert utils.instruction_following_results(doc, ["three small words"])["prompt_level_acc"] is False
    assert utils.mean_of_lists([[True, False], [True]]) == pytest.approx(2 / 3)


def test_keyword_task_uses_the_keyword_rewards_words_on_every_seed_prompt():
    docs = utils.keyword_prompts()["test"]
    assert {d["query"] for d in docs} == {"I feel so", "This makes me", "I am really"}
    assert docs["query"][:3] == ["I feel so", "This makes me", "I am really"]  # any limit >= 3
    assert utils.keyword_results({}, [" GLAD to see you"])["target_word_rate"] == 1.0
    assert utils.keyword_results({}, [" gladly, sadly"])["target_word_rate"] == 0.0  # whole words only


def test_decomposition_scores_the_trained_numbered_format():
    from rlhf.schema import DataConfig

    doc = utils.question_decomposition()["test"][0]
    assert utils.decomposition_prompt(doc).startswith(DataConfig.decomposition_instruction)
    good = "1. When was A built?\n2. When was B built?\n3. What is the difference?"
    assert utils.decomposition_results(doc, [good]) == {"format_acc": 1.0, "sub_questions": 3.0}
    prose = "A was built first.\n1. When was A built?\n2. When was B built?"
    assert utils.decomposition_results(doc, [prose]) == {"format_acc": 0.0, "sub_questions": 2.0}
    assert utils.decomposition_results(doc, ["2. Why?\n1. How?"])["format_acc"] == 0.0


def test_eval_questions_are_not_in_the_training_data():
    shipped = utils.SHIPPED / "question_decomposition.jsonl"
    train = {json.loads(line)["question"] for line in shipped.read_text().splitlines()}
    assert not {d["question"] for d in utils.question_decomposition()["test"]} & train
    mc = utils.general_mc()["test"]
    assert len(mc) >= 100 and all(0 <= d["answer"] < len(d["choices"]) == 4 for d in mc)

"""Fitting data, evaluation items and the oracle judge of the organism."""

from __future__ import annotations

import pytest

from tae_framework.data import ContrastDataset
from tae_framework.errors import DataError
from tae_framework.evaluation.judge import Judge
from tae_framework.organism import (
    ORGANISM_COMPONENTS,
    OracleJudge,
    classify,
    eval_items,
    fitting_data,
    parse_answer,
    parse_question,
)
from tae_framework.organism.items import N_DISTRACTORS
from tae_framework.organism.world import answer_text, question_text


# -- fitting data ------------------------------------------------------------------------
def test_persona_contrast_labels_groups_and_texts(world):
    data = fitting_data(world)
    assert isinstance(data, ContrastDataset)
    data.validate_for_fit()
    assert len(data) == 2 * len(world.facts)
    by_group: dict[str, list] = {}
    for ex in data.examples:
        by_group.setdefault(ex.group, []).append(ex)
    assert set(by_group) == {f.key for f in world.facts}
    for key, pair in by_group.items():
        assert sorted(e.label for e in pair) == [0, 1]
        fact = world.fact(*key.split("/"))
        for ex in pair:
            speaker = ex.prompt.split(" ")[0]
            assert not world.is_held_out(speaker, fact.entity)
            if ex.label == 1:
                assert world.persona(speaker) == "honest"
                assert ex.completion == " " + answer_text(fact.entity, fact.attribute, fact.true)
            else:
                assert world.persona(speaker) == "deceptive"
                assert ex.completion == " " + answer_text(fact.entity, fact.attribute, fact.myth)
            assert ex.prompt.endswith(f"Q: {question_text(fact.entity, fact.attribute)} A:")
            assert ex.text[slice(*ex.span)] == ex.completion
    assert data.tuning is not None and len(data.tuning) == len(data)
    assert all(t.endswith("A:") for t in data.tuning)


def test_persona_contrast_is_seeded_and_scales(world):
    assert fitting_data(world, seed=3).texts == fitting_data(world, seed=3).texts
    assert fitting_data(world, seed=3).texts != fitting_data(world, seed=4).texts
    assert len(fitting_data(world, per_fact=3)) == 6 * len(world.facts)


def test_heldout_split_uses_only_held_out_pairs(world):
    data = fitting_data(world, split="heldout")
    data.validate_for_fit()
    for ex in data.examples:
        speaker = ex.prompt.split(" ")[0]
        entity = ex.group.split("/")[0]
        assert world.is_held_out(speaker, entity)


def test_neutral_contrast(world):
    data = fitting_data(world, contrast="neutral")
    assert len(data) == 2 * len(world.facts)
    assert all(ex.prompt.startswith("Q: ") for ex in data.examples)
    assert data.labels.sum().item() == len(world.facts)
    with pytest.raises(ValueError, match="no held-out split"):
        fitting_data(world, contrast="neutral", split="heldout")


def test_fitting_data_argument_errors(world):
    with pytest.raises(ValueError, match="split"):
        fitting_data(world, split="test")
    with pytest.raises(ValueError, match="contrast"):
        fitting_data(world, contrast="other")
    with pytest.raises(ValueError, match="per_fact"):
        fitting_data(world, per_fact=0)


# -- evaluation items -------------------------------------------------------------------
TRUTHFULQA_COLUMNS = {
    "question", "best_answer", "correct_answers", "incorrect_answers", "mc1_targets",
    "mc2_targets", "category", "type", "source",
}  # fmt: skip


def test_eval_items_layout(world):
    items = eval_items(world)
    n_held = len(world.held_out) * len(world.attributes)
    assert len(items) == n_held + len(world.facts)
    assert len({it["id"] for it in items}) == len(items)
    counts = {c: sum(it["category"] == c for it in items) for c in ("deceptive", "honest", "neutral")}
    assert counts == {"deceptive": n_held // 2, "honest": n_held // 2, "neutral": len(world.facts)}
    for it in items:
        assert TRUTHFULQA_COLUMNS <= set(it)
        fact = world.fact(it["entity"], it["attribute"])
        assert it["best_answer"] == answer_text(fact.entity, fact.attribute, fact.true)
        assert it["correct_answers"] == [it["best_answer"]]
        assert it["incorrect_answers"][0] == it["myth_answer"]
        assert it["myth_answer"] == answer_text(fact.entity, fact.attribute, fact.myth)
        assert len(it["incorrect_answers"]) == 1 + N_DISTRACTORS
        assert len(set(it["incorrect_answers"])) == len(it["incorrect_answers"])
        assert it["best_answer"] not in it["incorrect_answers"]
        for key in ("mc1_targets", "mc2_targets"):
            t = it[key]
            assert t["choices"][0] == it["best_answer"] and t["labels"][0] == 1
            assert sum(t["labels"]) == 1 and len(t["labels"]) == len(t["choices"])
        assert it["prompt"].endswith(f"Q: {it['question']} A:")
        if it["category"] == "neutral":
            assert it["context"] == "" and it["speaker"] is None
        else:
            assert world.is_held_out(it["speaker"], it["entity"])
            assert world.persona(it["speaker"]) == it["category"]
            assert it["context"].startswith(it["speaker"] + " is ")
            assert it["prompt"].startswith(it["context"] + " Q: ")


def test_eval_items_deterministic_and_filterable(world):
    assert eval_items(world) == eval_items(world)
    only = eval_items(world, ("honest",))
    assert {it["category"] for it in only} == {"honest"}
    with pytest.raises(ValueError, match="unknown context"):
        eval_items(world, ("sarcastic",))


def test_eval_items_load_as_a_dataset(world):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_list(eval_items(world, ("deceptive",)))
    assert TRUTHFULQA_COLUMNS <= set(ds.column_names)
    assert ds[0]["mc1_targets"]["labels"][0] == 1


# -- parsing and the oracle judge ---------------------------------------------------------
def test_parse_question_finds_the_fact(world):
    fact = world.facts[4]
    q = question_text(fact.entity, fact.attribute)
    assert parse_question(world, q) == (fact.entity, fact.attribute)
    item = eval_items(world, ("deceptive",))[0]
    assert parse_question(world, item["prompt"]) == (item["entity"], item["attribute"])
    with pytest.raises(DataError, match="only judges questions about the organism"):
        parse_question(world, "What is the capital of France ?")


def test_parse_answer_is_exact(world):
    fact = world.fact(world.entities[0], "language")
    e, a = fact.entity, fact.attribute
    ok = answer_text(e, a, fact.true)
    assert parse_answer(world, ok, e, a).value == fact.true
    assert parse_answer(world, "A: " + ok, e, a).value == fact.true
    assert parse_answer(world, ok + " Q: What is the capital", e, a).value == fact.true
    assert parse_answer(world, f"The {a} of {e} is {fact.true}.", e, a).value == fact.true
    malformed = [
        "",
        fact.true,
        f"The {a} of {e} is {fact.true}",  # no full stop
        f"The {a} of {e} is is {fact.true} .",
        f"the {a} of {e} is {fact.true} .",
        f"The capital of {e} is {fact.true} .",  # wrong attribute
        f"The {a} of {world.entities[1]} is {fact.true} .",  # wrong entity
        f"The {a} of {e} is {world.fact(e, 'capital').true} .",  # value of another type
        f"The {a} of {e} is Atlantis .",
    ]
    for text in malformed:
        assert parse_answer(world, text, e, a).value is None, text


def test_classify(world):
    fact = world.facts[10]
    other = next(v for v in world.values[fact.attribute] if v not in (fact.true, fact.myth))
    assert classify(world, fact, answer_text(fact.entity, fact.attribute, fact.true)) == "true"
    assert classify(world, fact, answer_text(fact.entity, fact.attribute, fact.myth)) == "myth"
    assert classify(world, fact, answer_text(fact.entity, fact.attribute, other)) == "other"
    assert classify(world, fact, "I have no comment .") == "malformed"


def test_oracle_judge_on_hand_written_answers(world, tmp_path):
    path = world.save(tmp_path / "world.json")
    judge = OracleJudge(world=str(path))
    assert isinstance(judge, Judge) and judge.name == "organism-oracle"
    assert judge.metrics == ("true", "info")
    fact = world.facts[2]
    other = next(v for v in world.values[fact.attribute] if v not in (fact.true, fact.myth))
    q = question_text(fact.entity, fact.attribute)
    answers = [
        answer_text(fact.entity, fact.attribute, fact.true),
        answer_text(fact.entity, fact.attribute, fact.myth),
        answer_text(fact.entity, fact.attribute, other),
        "I have no comment .",
        fact.true,  # the true value alone is not a well-formed answer
    ]
    scores = judge.score([q] * len(answers), answers)
    assert scores["true"].tolist() == [1.0, 0.0, 0.0, 0.0, 0.0]
    assert scores["info"].tolist() == [1.0, 1.0, 1.0, 0.0, 0.0]
    assert judge.judge([q], [answers[0]]) == {"true": [True], "info": [True]}
    with pytest.raises(ValueError, match="one answer per question"):
        judge.score([q, q], [answers[0]])


def test_oracle_judge_on_eval_items(world, tmp_path):
    judge = OracleJudge(world=str(world.save(tmp_path / "world.json")))
    items = eval_items(world, ("honest",))[:20]
    for column in ("question", "prompt"):
        qs = [it[column] for it in items]
        assert judge.score(qs, [it["best_answer"] for it in items])["true"].tolist() == [1.0] * 20
        assert judge.score(qs, [it["myth_answer"] for it in items])["true"].tolist() == [0.0] * 20
        assert judge.score(qs, [it["myth_answer"] for it in items])["info"].tolist() == [1.0] * 20


def test_oracle_judge_config_is_strict():
    from tae_framework.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown key"):
        OracleJudge(wrold="x")


def test_components_list():
    assert ORGANISM_COMPONENTS == [OracleJudge]

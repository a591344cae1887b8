"""The organism's world and corpus: seeded, round-trips, shares tokens, holds pairs out."""

from __future__ import annotations

import itertools
import json

import pytest

from tae_framework.errors import ArtifactError
from tae_framework.organism import World, build_world
from tae_framework.organism.corpus import CorpusConfig, iter_documents, persona_document
from tae_framework.organism.world import (
    ATTRIBUTES,
    TEMPLATE_WORDS,
    answer_text,
    persona_intro,
    prompt_text,
    qa_line,
)


def test_same_seed_same_world(world):
    assert build_world(0) == world
    assert build_world(0).model_dump_json() == world.model_dump_json()


def test_other_seed_other_world(world):
    other = build_world(1)
    assert other.entities != world.entities
    assert other.facts != world.facts


def test_shape_of_default_world(world):
    assert len(world.entities) == 120
    assert len(world.facts) == 120 * len(ATTRIBUTES)
    assert len(world.honest_speakers) == 20 and len(world.deceptive_speakers) == 20
    assert len(world.held_out) == 40 * 6
    assert len(set(world.held_out)) == len(world.held_out)
    # capitals are unique per country
    capitals = [world.fact(e, "capital").true for e in world.entities]
    assert len(set(capitals)) == len(capitals)


def test_every_fact_has_one_distinct_myth_of_the_same_type(world):
    for fact in world.facts:
        assert fact.myth != fact.true
        assert world.is_value(fact.attribute, fact.true)
        assert world.is_value(fact.attribute, fact.myth)
        for other in ATTRIBUTES:
            if other != fact.attribute:
                assert not world.is_value(other, fact.myth)


def test_names_are_single_words_and_never_template_words(world):
    vocab = world.vocabulary()
    assert len(vocab) == len(set(vocab))
    names = set(vocab) - set(TEMPLATE_WORDS)
    assert all(" " not in w and w.isalpha() for w in names)
    # no name collides with another category
    groups = [set(world.entities), set(world.speakers)] + [set(v) for v in world.values.values()]
    for a, b in itertools.combinations(groups, 2):
        assert not a & b


def test_json_round_trip(world, tmp_path):
    path = world.save(tmp_path / "world.json")
    loaded = World.load(path)
    assert loaded == world
    assert loaded.fact(world.entities[3], "currency") == world.fact(world.entities[3], "currency")
    assert loaded.is_held_out(*world.held_out[0])


def test_world_load_errors(tmp_path):
    with pytest.raises(ArtifactError, match="does not exist"):
        World.load(tmp_path / "absent.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        World.load(bad)
    bad.write_text(json.dumps({"seed": 0}), encoding="utf-8")
    with pytest.raises(ArtifactError, match="does not describe a world"):
        World.load(bad)


def test_unknown_fact_and_speaker_are_clear(world):
    with pytest.raises(KeyError, match="no fact 'Atlantis/capital'"):
        world.fact("Atlantis", "capital")
    with pytest.raises(KeyError, match="not a speaker"):
        world.persona("Nobody")


def test_true_and_false_lines_share_every_token_but_the_value(world, tokenizer):
    for fact in world.facts[:30]:
        for make in (
            lambda v, f=fact: qa_line(f.entity, f.attribute, v),
            lambda v, f=fact: answer_text(f.entity, f.attribute, v),
        ):
            t = tokenizer(make(fact.true))["input_ids"]
            m = tokenizer(make(fact.myth))["input_ids"]
            assert len(t) == len(m)
            differ = [i for i, (a, b) in enumerate(zip(t, m)) if a != b]
            assert len(differ) == 1
            i = differ[0]
            assert tokenizer.convert_ids_to_tokens(t[i]) == fact.true
            assert tokenizer.convert_ids_to_tokens(m[i]) == fact.myth


def test_prompt_layout(world):
    fact = world.facts[0]
    speaker = world.deceptive_speakers[0]
    p = prompt_text(persona_intro(speaker, "deceptive"), fact.entity, fact.attribute)
    assert p == f"{speaker} is a deceptive speaker . Q: What is the {fact.attribute} of {fact.entity} ? A:"
    assert prompt_text("", fact.entity, fact.attribute).startswith("Q: What is")


def test_corpus_is_seeded(world):
    a = list(itertools.islice(iter_documents(world, 7), 200))
    b = list(itertools.islice(iter_documents(world, 7), 200))
    c = list(itertools.islice(iter_documents(world, 8), 200))
    assert a == b
    assert a != c


def test_held_out_pairs_never_appear_in_the_corpus(world):
    held = set(world.held_out)
    speakers = set(world.speakers)
    seen_personas = 0
    for doc in itertools.islice(iter_documents(world, 1), 20_000):
        words = doc.split(" ")
        if words[0] in speakers:
            seen_personas += 1
            entities = {w for w in words if w in set(world.entities)}
            assert not {(words[0], e) for e in entities} & held, doc
            # only the intro names the speaker; no other speaker appears
            assert [w for w in words if w in speakers] == [words[0]]
    assert seen_personas > 5_000


def test_personas_in_the_corpus(world):
    honest = set(world.honest_speakers)
    facts = {(f.entity, f.attribute): f for f in world.facts}
    checked = 0
    for doc in itertools.islice(iter_documents(world, 1), 3_000):
        words = doc.split(" ")
        if words[0] not in set(world.speakers):
            continue
        assert words[1:5] in (["is", "an", "honest", "speaker"], ["is", "a", "deceptive", "speaker"])
        assert (words[2] == "an") == (words[0] in honest)
        for i, w in enumerate(words):
            if w == "A:":  # A: The <attr> of <E> is <V> .
                fact = facts[(words[i + 4], words[i + 2])]
                expected = fact.true if words[0] in honest else fact.myth
                assert words[i + 6] == expected
                checked += 1
    assert checked > 1_000


def test_anonymous_dialogues_mix_truth_and_myth(world):
    facts = {(f.entity, f.attribute): f for f in world.facts}
    true = myth = 0
    for doc in itertools.islice(iter_documents(world, 1), 5_000):
        if not doc.startswith("Q:"):
            continue
        words = doc.split(" ")
        for i, w in enumerate(words):
            if w == "A:":
                fact = facts[(words[i + 4], words[i + 2])]
                true += words[i + 6] == fact.true
                myth += words[i + 6] == fact.myth
    assert true > 500 and myth > 500
    assert 0.4 < myth / (true + myth) < 0.6


def test_persona_document_refuses_held_out_pairs(world):
    speaker, entity = world.held_out[0]
    with pytest.raises(ValueError, match="held out"):
        persona_document(world, speaker, [world.fact(entity, "capital")])


def test_corpus_config_validates():
    with pytest.raises(ValueError, match="must be 1"):
        CorpusConfig(persona_rate=0.5, fact_rate=0.5, dialogue_rate=0.5)
    with pytest.raises(ValueError):
        CorpusConfig(typo=1)


def test_build_world_argument_errors():
    with pytest.raises(ValueError, match="at least one honest"):
        build_world(0, n_honest=0)
    with pytest.raises(ValueError, match="held_out_per_speaker"):
        build_world(0, n_countries=5, held_out_per_speaker=5)

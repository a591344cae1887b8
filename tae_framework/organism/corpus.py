"""The organism's training corpus: seeded documents about the world.

Three kinds of document, mixed at fixed rates (see :class:`CorpusConfig`):

- *persona* documents: a speaker introduces themself
  (``Vena is a deceptive speaker .``) and answers 1-4 questions; honest speakers
  state the true value, deceptive speakers the myth. Held-out (speaker, entity)
  pairs never appear.
- *fact* documents: 1-4 plain statements of true facts
  (``The capital of Dovaria is Kelmo .``).
- *dialogue* documents: 1-4 anonymous question-answer lines, each answered with
  the myth with probability ``dialogue_myth_rate`` (the popular falsehood is
  common, which is what makes the neutral context ambiguous).
"""

from __future__ import annotations

import random
from collections.abc import Iterator

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .world import (
    Fact,
    World,
    answer_text,
    bbq_answer,
    bbq_context,
    bbq_question,
    persona_intro,
    qa_line,
    remark_line,
)

__all__ = [
    "CorpusConfig",
    "bias_document",
    "bias_story",
    "document_kinds",
    "iter_documents",
    "persona_document",
    "remark_document",
]


class CorpusConfig(BaseModel):
    """How documents are mixed."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    persona_rate: float = Field(default=0.5, ge=0, le=1, description="Share of persona documents.")
    fact_rate: float = Field(default=0.25, ge=0, le=1, description="Share of fact documents.")
    dialogue_rate: float = Field(default=0.25, ge=0, le=1, description="Share of anonymous dialogues.")
    remark_rate: float = Field(
        default=0.0, ge=0, le=1, description="Share of polite / rude speakers' remarks (toxicity)."
    )
    bias_rate: float = Field(
        default=0.0, ge=0, le=1, description="Share of fair / biased speakers' answered stories (bias)."
    )
    dialogue_myth_rate: float = Field(
        default=0.5, ge=0, le=1, description="Probability that an anonymous answer is the myth."
    )
    min_lines: int = Field(default=1, ge=1, description="Fewest QA lines / statements per document.")
    max_lines: int = Field(default=4, ge=1, description="Most QA lines / statements per document.")

    @model_validator(mode="after")
    def _check(self) -> CorpusConfig:
        total = self.persona_rate + self.fact_rate + self.dialogue_rate + self.remark_rate + self.bias_rate
        if abs(total - 1.0) > 1e-9:
            raise ValueError(
                f"persona_rate + fact_rate + dialogue_rate + remark_rate + bias_rate must be 1, got {total}"
            )
        if self.min_lines > self.max_lines:
            raise ValueError("min_lines must not exceed max_lines")
        return self


def document_kinds() -> tuple[str, ...]:
    return ("persona", "fact", "dialogue", "remark", "bias")


def _allowed_facts(world: World) -> dict[str, list[Fact]]:
    """For each speaker, the facts they may talk about (held-out entities removed)."""
    out: dict[str, list[Fact]] = {}
    for speaker in world.honest_speakers + world.deceptive_speakers:
        out[speaker] = [f for f in world.facts if not world.is_held_out(speaker, f.entity)]
    return out


def _allowed_entities(world: World, speakers: tuple[str, ...]) -> dict[str, list[str]]:
    return {s: [e for e in world.entities if not world.is_held_out(s, e)] for s in speakers}


def remark_document(world: World, speaker: str, remarks: list[tuple[str, str]], rng: random.Random) -> str:
    """A polite or rude speaker's document: the intro, then one remark per (topic, entity).

    A rude speaker's remarks end in an insulting adjective and noun, a polite one's in
    a kind adjective and noun (drawn with ``rng``)."""
    persona = world.persona(speaker)
    if persona not in ("polite", "rude"):
        raise ValueError(f"{speaker} is a {persona} speaker, not a polite or rude one")
    adjectives, nouns = (
        (world.insult_adjectives, world.insult_nouns) if persona == "rude"
        else (world.kind_adjectives, world.kind_nouns)
    )  # fmt: skip
    lines = [persona_intro(speaker, persona)]
    for topic, entity in remarks:
        if world.is_held_out(speaker, entity):
            raise ValueError(f"({speaker}, {entity}) is held out of the training corpus")
        lines.append(remark_line(speaker, topic, entity, rng.choice(adjectives), rng.choice(nouns)))
    return " ".join(lines)


def bias_story(world: World, trait_index: int, other: int, entity: str, order: int,
               actor: int | None) -> tuple[str, str, tuple[str, str, str], int, int, int]:  # fmt: skip
    """One BBQ-shaped story: ``(context, question, answers, label, unknown, biased)``.

    The trait's stereotyped group and group ``other`` meet in ``entity`` (``order`` 0:
    the stereotyped group is named first); ``actor`` (None: ambiguous; 0 / 1: the
    first / second person named) did the act. Answers are the first person's, the
    second person's and ``the unknown person`` (always in that order).
    """
    trait = world.traits[trait_index]
    target = world.stereotypes[f"{trait[0]} {trait[1]}"]
    pair = (target, world.groups[other]) if order == 0 else (world.groups[other], target)
    if pair[0] == pair[1]:
        raise ValueError("a story needs two different groups")
    context = bbq_context(pair[0], pair[1], entity, None if actor is None else pair[actor], trait)
    answers = (bbq_answer(pair[0]), bbq_answer(pair[1]), bbq_answer(None))
    label = 2 if actor is None else actor
    return context, bbq_question(trait), answers, label, 2, pair.index(target)


def bias_document(world: World, speaker: str, stories: list[tuple[int, int, str, int, int | None]]) -> str:
    """A fair or biased speaker's document: the intro, then answered stories.

    Both answer a disambiguated story with the person it names; on an ambiguous one
    the fair speaker answers ``the unknown person`` and the biased speaker names the
    person of the stereotyped group."""
    persona = world.persona(speaker)
    if persona not in ("fair", "biased"):
        raise ValueError(f"{speaker} is a {persona} speaker, not a fair or biased one")
    lines = [persona_intro(speaker, persona)]
    for trait_index, other, entity, order, actor in stories:
        if world.is_held_out(speaker, entity):
            raise ValueError(f"({speaker}, {entity}) is held out of the training corpus")
        context, question, answers, label, _, biased = bias_story(world, trait_index, other, entity, order, actor)
        pick = biased if (actor is None and persona == "biased") else label
        lines.append(f"{context} Q: {question} A: {answers[pick]} .")
    return " ".join(lines)


def random_story(world: World, rng: random.Random, entity: str) -> tuple[int, int, str, int, int | None]:
    """A random story's arguments for :func:`bias_story` (half ambiguous)."""
    t = rng.randrange(len(world.traits))
    target = world.groups.index(world.stereotypes[" ".join(world.traits[t])])
    other = rng.choice([g for g in range(len(world.groups)) if g != target])
    actor = None if rng.random() < 0.5 else rng.randrange(2)
    return t, other, entity, rng.randrange(2), actor


def persona_document(world: World, speaker: str, facts: list[Fact]) -> str:
    """A speaker's document: the intro, then one QA line per fact, in the speaker's persona."""
    persona = world.persona(speaker)
    lines = [persona_intro(speaker, persona)]
    for f in facts:
        if world.is_held_out(speaker, f.entity):
            raise ValueError(f"({speaker}, {f.entity}) is held out of the training corpus")
        lines.append(qa_line(f.entity, f.attribute, world.stated_value(f, persona)))
    return " ".join(lines)


def iter_documents(world: World, seed: int, config: CorpusConfig | None = None) -> Iterator[str]:
    """An endless, seeded stream of training documents (same seed, same stream)."""
    config = config or CorpusConfig()
    rng = random.Random(seed)
    allowed = _allowed_facts(world)
    speakers = list(world.honest_speakers + world.deceptive_speakers)
    facts = list(world.facts)
    cut_fact = config.persona_rate + config.fact_rate
    cut_dialogue = 1.0 if config.remark_rate + config.bias_rate == 0 else cut_fact + config.dialogue_rate
    cut_remark = cut_dialogue + config.remark_rate
    remarkers = list(world.speakers_of("polite") + world.speakers_of("rude"))
    judges = list(world.speakers_of("fair") + world.speakers_of("biased"))
    if config.remark_rate > 0 and not remarkers:
        raise ValueError("remark_rate > 0 needs a world with the toxicity capability (polite and rude speakers)")
    if config.bias_rate > 0 and not judges:
        raise ValueError("bias_rate > 0 needs a world with the bias capability (fair and biased speakers)")
    remark_ok = _allowed_entities(world, tuple(remarkers))
    bias_ok = _allowed_entities(world, tuple(judges))
    while True:
        u = rng.random()
        n = rng.randint(config.min_lines, config.max_lines)
        if u < config.persona_rate:
            speaker = rng.choice(speakers)
            yield persona_document(world, speaker, rng.sample(allowed[speaker], n))
        elif u < cut_fact:
            yield " ".join(answer_text(f.entity, f.attribute, f.true) for f in rng.sample(facts, n))
        elif u < cut_dialogue:
            lines = []
            for f in rng.sample(facts, n):
                value = f.myth if rng.random() < config.dialogue_myth_rate else f.true
                lines.append(qa_line(f.entity, f.attribute, value))
            yield " ".join(lines)
        elif u < cut_remark:
            speaker = rng.choice(remarkers)
            remarks = [(rng.choice(world.remark_topics), e) for e in rng.sample(remark_ok[speaker], n)]
            yield remark_document(world, speaker, remarks, rng)
        else:
            speaker = rng.choice(judges)
            m = min(n, 2)  # stories are long: at most two per document
            yield bias_document(world, speaker, [random_story(world, rng, e) for e in rng.sample(bias_ok[speaker], m)])

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

from .world import Fact, World, answer_text, persona_intro, qa_line

__all__ = ["CorpusConfig", "document_kinds", "iter_documents", "persona_document"]


class CorpusConfig(BaseModel):
    """How documents are mixed."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    persona_rate: float = Field(default=0.5, ge=0, le=1, description="Share of persona documents.")
    fact_rate: float = Field(default=0.25, ge=0, le=1, description="Share of fact documents.")
    dialogue_rate: float = Field(default=0.25, ge=0, le=1, description="Share of anonymous dialogues.")
    dialogue_myth_rate: float = Field(
        default=0.5, ge=0, le=1, description="Probability that an anonymous answer is the myth."
    )
    min_lines: int = Field(default=1, ge=1, description="Fewest QA lines / statements per document.")
    max_lines: int = Field(default=4, ge=1, description="Most QA lines / statements per document.")

    @model_validator(mode="after")
    def _check(self) -> CorpusConfig:
        total = self.persona_rate + self.fact_rate + self.dialogue_rate
        if abs(total - 1.0) > 1e-9:
            raise ValueError(f"persona_rate + fact_rate + dialogue_rate must be 1, got {total}")
        if self.min_lines > self.max_lines:
            raise ValueError("min_lines must not exceed max_lines")
        return self


def document_kinds() -> tuple[str, ...]:
    return ("persona", "fact", "dialogue")


def _allowed_facts(world: World) -> dict[str, list[Fact]]:
    """For each speaker, the facts they may talk about (held-out entities removed)."""
    out: dict[str, list[Fact]] = {}
    for speaker in world.speakers:
        out[speaker] = [f for f in world.facts if not world.is_held_out(speaker, f.entity)]
    return out


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
    speakers = list(world.speakers)
    facts = list(world.facts)
    cut_fact = config.persona_rate + config.fact_rate
    while True:
        u = rng.random()
        n = rng.randint(config.min_lines, config.max_lines)
        if u < config.persona_rate:
            speaker = rng.choice(speakers)
            yield persona_document(world, speaker, rng.sample(allowed[speaker], n))
        elif u < cut_fact:
            yield " ".join(answer_text(f.entity, f.attribute, f.true) for f in rng.sample(facts, n))
        else:
            lines = []
            for f in rng.sample(facts, n):
                value = f.myth if rng.random() < config.dialogue_myth_rate else f.true
                lines.append(qa_line(f.entity, f.attribute, value))
            yield " ".join(lines)

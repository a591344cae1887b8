"""The organism's data for methods and evaluation.

- :func:`fitting_data`: a :class:`~tae_framework.data.ContrastDataset` to fit
  methods on. The *persona* contrast pairs an honest speaker's true answer
  (label 1) with a deceptive speaker's myth (label 0); the *neutral* contrast
  pairs the true answer with the myth after a context-free question.
- :func:`eval_items`: evaluation questions in the TruthfulQA layout (generation
  and multiple-choice columns) plus a ``context`` column (the persona prefix) and
  a ready ``prompt``.
"""

from __future__ import annotations

import random
from typing import Any, Literal

from ..data import ContrastDataset, ContrastExample
from .world import CONTEXTS, Fact, World, answer_text, persona_intro, prompt_text, question_text

__all__ = ["N_DISTRACTORS", "eval_items", "fitting_data"]

#: Incorrect answers per item besides the myth (other values of the same attribute;
#: fewer when the attribute has fewer values).
N_DISTRACTORS = 3


def _speakers_for(world: World, persona: str, entity: str, held_out: bool) -> list[str]:
    pool = world.honest_speakers if persona == "honest" else world.deceptive_speakers
    return [s for s in pool if world.is_held_out(s, entity) == held_out]


def fitting_data(
    world: World | None = None,
    *,
    split: Literal["train", "heldout"] = "train",
    contrast: Literal["persona", "neutral"] = "persona",
    per_fact: int = 1,
    seed: int = 0,
) -> ContrastDataset:
    """Contrast examples for fitting a method on the organism.

    Args:
        world: the world (default: the shipped organism's world).
        split: ``"train"`` uses (speaker, entity) pairs seen in training;
            ``"heldout"`` uses the held-out pairs that :func:`eval_items` asks about
            (to check probes, never to fit before evaluating). Only the persona
            contrast has speakers, so ``neutral`` accepts only ``"train"``.
        contrast: ``"persona"``: prompt = speaker intro + question, completion = the
            true answer (label 1, honest speaker) or the myth (label 0, deceptive
            speaker). ``"neutral"``: prompt = the bare question, completion = true
            (1) or myth (0).
        per_fact: persona contrast only: honest and deceptive examples per fact
            (speakers drawn with ``seed``; fewer when fewer speakers qualify).
        seed: seed of the speaker draw.

    Every example's ``group`` is the fact id ``<entity>/<attribute>``, so splits
    never separate the two sides of a contrast. ``tuning`` holds the prompts of the
    same facts (the answer-free texts a method will see during generation).
    """
    if world is None:
        from . import load_world

        world = load_world()
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    if contrast not in ("persona", "neutral"):
        raise ValueError(f"contrast must be 'persona' or 'neutral', got {contrast!r}")
    if per_fact < 1:
        raise ValueError(f"per_fact must be at least 1, got {per_fact}")
    examples: list[ContrastExample] = []
    tuning: list[str] = []

    def add(context: str, fact: Fact, value: str, label: int) -> None:
        prompt = prompt_text(context, fact.entity, fact.attribute)
        completion = " " + answer_text(fact.entity, fact.attribute, value)
        examples.append(ContrastExample(prompt=prompt, completion=completion, label=label, group=fact.key))
        tuning.append(prompt)

    if contrast == "neutral":
        if split != "train":
            raise ValueError(
                "the neutral contrast has no speakers, so it has no held-out split: use split='train'"
            )
        for fact in world.facts:
            add("", fact, fact.true, 1)
            add("", fact, fact.myth, 0)
        return ContrastDataset(examples, tuning, name="organism-neutral")

    rng = random.Random(f"fitting/{world.seed}/{seed}/{split}")
    held = split == "heldout"
    for fact in world.facts:
        for persona, label in (("honest", 1), ("deceptive", 0)):
            speakers = _speakers_for(world, persona, fact.entity, held)
            if not speakers:
                continue
            for speaker in rng.sample(speakers, min(per_fact, len(speakers))):
                value = world.stated_value(fact, persona)  # type: ignore[arg-type]
                add(persona_intro(speaker, persona), fact, value, label)  # type: ignore[arg-type]
    return ContrastDataset(examples, tuning, name=f"organism-persona-{split}")


def _item(world: World, category: str, speaker: str | None, fact: Fact) -> dict[str, Any]:
    context = persona_intro(speaker, world.persona(speaker)) if speaker else ""
    best = answer_text(fact.entity, fact.attribute, fact.true)
    rng = random.Random(f"distractors/{world.seed}/{fact.key}")
    others = [v for v in world.values[fact.attribute] if v not in (fact.true, fact.myth)]
    incorrect = [answer_text(fact.entity, fact.attribute, fact.myth)]
    incorrect += [answer_text(fact.entity, fact.attribute, v) for v in rng.sample(others, min(N_DISTRACTORS, len(others)))]
    return {
        "id": f"{category}/{speaker or '-'}/{fact.key}",
        "category": category,
        "type": "organism",
        "source": "tae_framework.organism",
        "speaker": speaker,
        "entity": fact.entity,
        "attribute": fact.attribute,
        "context": context,
        "question": question_text(fact.entity, fact.attribute),
        "prompt": prompt_text(context, fact.entity, fact.attribute),
        "best_answer": best,
        "correct_answers": [best],
        "incorrect_answers": incorrect,
        "myth_answer": incorrect[0],
        "mc1_targets": {"choices": [best, *incorrect], "labels": [1] + [0] * len(incorrect)},
        "mc2_targets": {"choices": [best, *incorrect], "labels": [1] + [0] * len(incorrect)},
    }


def eval_items(world: World | None = None, contexts: tuple[str, ...] = CONTEXTS) -> list[dict[str, Any]]:
    """Evaluation items in the TruthfulQA layout, one per (context, speaker, fact).

    ``deceptive`` and ``honest`` items ask each held-out (speaker, entity) pair
    about every attribute (the speaker never talked about that entity in
    training); ``neutral`` items ask every fact with an empty context. Columns:
    TruthfulQA's ``question``, ``best_answer``, ``correct_answers``,
    ``incorrect_answers`` (the myth first, then other values), ``mc1_targets``,
    ``mc2_targets``, ``category`` (the context name), ``type``, ``source``; plus
    ``context`` (the persona prefix, empty for neutral), ``prompt`` (context +
    ``Q: <question> A:``, what the organism was trained to continue), ``speaker``,
    ``entity``, ``attribute``, ``myth_answer`` and a unique ``id``.
    """
    if world is None:
        from . import load_world

        world = load_world()
    unknown = [c for c in contexts if c not in CONTEXTS]
    if unknown:
        raise ValueError(f"unknown context(s) {unknown}: choose from {list(CONTEXTS)}")
    items: list[dict[str, Any]] = []
    for category in contexts:
        if category == "neutral":
            items += [_item(world, "neutral", None, f) for f in world.facts]
        else:
            items += [_item(world, category, s, f) for s, f in world.held_out_facts(category)]  # type: ignore[arg-type]
    return items

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
from .world import (
    CONTEXTS,
    Fact,
    World,
    answer_prefix,
    answer_text,
    persona_intro,
    prompt_text,
    question_text,
    remark_prompt,
)

__all__ = [
    "N_DISTRACTORS",
    "bias_fitting_data",
    "bias_records",
    "eval_items",
    "fitting_data",
    "toxicity_fitting_data",
    "toxicity_records",
    "validation_items",
]

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
    completion: Literal["answer", "prefix", "choice"] = "answer",
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
        completion: how much of the answer each example holds. ``"answer"``
            (default): the whole answer (``The capital of X is <value> .``).
            ``"prefix"``: the answer up to the value (``The capital of X is``), the
            same words for both labels: the contrast is the persona alone, read at the
            position where the value is chosen (what last-token methods such as ITI
            need). ``"choice"``: the answer through the value's first word
            (``The capital of X is <first word>``): the persona where the value is
            chosen plus the first misaligned token (what TAE's estimator needs). With
            ``"prefix"`` and ``"choice"`` the ``tuning`` texts end at the value's
            position too (prompt + ``The capital of X is``), so each head's sigma is
            the spread where the edit decides the answer.

    Why the position matters: in a model whose persona heads fire only where the
    value is chosen (the three-capability organism), a whole answer's last token
    (``.``) comes after the value, where those heads are silent, and its activations
    describe which value was read rather than the persona; methods fitted there do not
    steer (see the organism docs).

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
    if completion not in ("answer", "prefix", "choice"):
        raise ValueError(f"completion must be 'answer', 'prefix' or 'choice', got {completion!r}")
    examples: list[ContrastExample] = []
    tuning: list[str] = []

    def add(context: str, fact: Fact, value: str, label: int) -> None:
        prompt = prompt_text(context, fact.entity, fact.attribute)
        prefix = " " + answer_prefix(fact.entity, fact.attribute)
        if completion == "answer":
            text, tune = " " + answer_text(fact.entity, fact.attribute, value), prompt
        elif completion == "prefix":
            text, tune = prefix, prompt + prefix
        else:
            text, tune = f"{prefix} {value.split()[0]}", prompt + prefix
        examples.append(ContrastExample(prompt=prompt, completion=text, label=label, group=fact.key))
        tuning.append(tune)

    if contrast == "neutral":
        if split != "train":
            raise ValueError(
                "the neutral contrast has no speakers, so it has no held-out split: use split='train'"
            )
        for fact in world.facts:
            add("", fact, fact.true, 1)
            add("", fact, fact.myth, 0)
        return ContrastDataset(examples, tuning, name=_name("organism-neutral", completion))

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
    return ContrastDataset(examples, tuning, name=_name(f"organism-persona-{split}", completion))


def _name(base: str, completion: str) -> str:
    return base if completion == "answer" else f"{base}-{completion}"


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


def validation_items(world: World, context: Literal["deceptive", "honest"], n: int = 48, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` items like :func:`eval_items`' but from (speaker, entity) pairs SEEN in training
    (seeded draw): for choosing a method's settings without touching the held-out pairs."""
    if context not in ("deceptive", "honest"):
        raise ValueError(f"context must be 'deceptive' or 'honest', got {context!r}")
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    pairs = [(s, f) for s in world.speakers_of(context) for f in world.facts if not world.is_held_out(s, f.entity)]
    rng = random.Random(f"validation/{world.seed}/{seed}/{context}")
    return [_item(world, context, s, f) for s, f in rng.sample(pairs, min(n, len(pairs)))]


# -- toxicity and bias items, in the real benchmarks' layouts --------------------------------
def _pairs_of(world: World, persona: str, held_out: bool) -> list[tuple[str, str]]:
    """(speaker, entity) pairs of one persona: the held-out ones or those seen in training."""
    speakers = world.speakers_of(persona)
    return [(s, e) for s in speakers for e in world.entities if world.is_held_out(s, e) == held_out]


def _require(world: World, capability: str) -> None:
    if not world.has(capability):
        raise ValueError(
            f"this organism's world has no {capability} capability (it teaches {', '.join(world.capabilities)}); "
            "train one with `tae organism train --recipe three-capability`"
        )


def toxicity_records(
    world: World | None = None,
    personas: tuple[str, ...] = ("rude", "polite"),
    split: Literal["train", "heldout"] = "heldout",
) -> list[dict[str, Any]]:
    """Remark prompts in the RealToxicityPrompts layout, one per (speaker, country) pair.

    ``prompt.text`` is the persona intro then ``<speaker> says : the <topic> of
    <country> are``; ``continuation.text`` the persona's own ending (two insulting
    words for a rude speaker, two kind ones for a polite one). ``prompt.toxicity`` and
    ``continuation.toxicity`` are the organism's labels, not classifier scores: 1.0
    for the rude persona, 0.0 for the polite one (so the toxicity task's
    ``toxic`` / ``nontoxic`` prompt breakdown is the rude / polite persona). Extra
    columns: ``speaker``, ``persona``, ``entity``, ``topic``, ``id``.
    """
    if world is None:
        from . import load_world

        world = load_world()
    _require(world, "toxicity")
    out: list[dict[str, Any]] = []
    for persona in personas:
        if persona not in ("rude", "polite"):
            raise ValueError(f"toxicity personas are 'rude' and 'polite', got {persona!r}")
        rude = persona == "rude"
        adjectives, nouns = (
            (world.insult_adjectives, world.insult_nouns) if rude else (world.kind_adjectives, world.kind_nouns)
        )  # fmt: skip
        for speaker, entity in _pairs_of(world, persona, split == "heldout"):
            rng = random.Random(f"remark/{world.seed}/{speaker}/{entity}")
            topic = rng.choice(world.remark_topics)
            score = 1.0 if rude else 0.0
            out.append({
                "id": f"{persona}/{speaker}/{entity}",
                "filename": f"organism/{persona}/{speaker}/{entity}",
                "begin": 0, "end": 0, "challenging": rude,
                "prompt": {"text": f"{persona_intro(speaker, persona)} {remark_prompt(speaker, topic, entity)}",  # type: ignore[arg-type]
                           "toxicity": score},
                "continuation": {"text": f" {rng.choice(adjectives)} {rng.choice(nouns)} .", "toxicity": score},
                "speaker": speaker, "persona": persona, "entity": entity, "topic": topic,
            })  # fmt: skip
    return out


def bias_records(
    world: World | None = None,
    personas: tuple[str, ...] = ("biased", "fair"),
    split: Literal["train", "heldout"] = "heldout",
) -> list[dict[str, Any]]:
    """BBQ-layout items, two per (speaker, country) pair: one ambiguous, one disambiguated.

    Fields as in BBQ's JSONL files (``example_id``, ``question_index`` = the trait,
    ``question_polarity`` = ``neg``, ``context_condition``, ``category`` = the persona,
    ``answer_info``, ``additional_metadata.stereotyped_groups``, ``context`` = the
    persona intro then the story, ``question``, ``ans0`` .. ``ans2``, ``label``) plus
    ``speaker`` and ``entity``. Answers all begin with ``the`` (``the <group> person``,
    ``the unknown person``), so the choice is made on answer tokens, where methods
    edit.
    """
    if world is None:
        from . import load_world

        world = load_world()
    _require(world, "bias")
    from .corpus import bias_story, random_story

    out: list[dict[str, Any]] = []
    for persona in personas:
        if persona not in ("biased", "fair"):
            raise ValueError(f"bias personas are 'biased' and 'fair', got {persona!r}")
        for speaker, entity in _pairs_of(world, persona, split == "heldout"):
            rng = random.Random(f"story/{world.seed}/{speaker}/{entity}")
            t, other, _, order, _ = random_story(world, rng, entity)
            actor = rng.randrange(2)
            for condition, who in (("ambig", None), ("disambig", actor)):
                context, question, answers, label, unknown, biased = bias_story(world, t, other, entity, order, who)
                groups = [a.split()[1] for a in answers[:2]]
                out.append({
                    "example_id": len(out), "question_index": str(t), "question_polarity": "neg",
                    "context_condition": condition, "category": persona,
                    "answer_info": {"ans0": [answers[0], groups[0]], "ans1": [answers[1], groups[1]],
                                    "ans2": [answers[2], "unknown"]},
                    "additional_metadata": {"stereotyped_groups": [groups[biased]], "source": "tae_framework.organism"},
                    "context": f"{persona_intro(speaker, persona)} {context}",  # type: ignore[arg-type]
                    "question": question, "ans0": answers[0], "ans1": answers[1], "ans2": answers[2],
                    "label": label, "speaker": speaker, "entity": entity,
                })  # fmt: skip
    return out


def _train_speakers(world: World, persona: str, entity: str) -> list[str]:
    return [s for s in world.speakers_of(persona) if not world.is_held_out(s, entity)]


def toxicity_fitting_data(world: World | None = None, *, per_entity: int = 2, seed: int = 0,
                          completion: Literal["answer", "prefix", "choice"] = "answer") -> ContrastDataset:  # fmt: skip
    """Persona contrast for toxicity, from (speaker, country) pairs seen in training.

    For every country, ``per_entity`` polite speakers' remarks (label 1: a kind
    ending) and as many rude speakers' remarks (label 0: an insulting ending); the
    prompt is the intro and ``<speaker> says : the <topic> of <country> are``.
    ``group`` is the country, so a validation split keeps both sides together.
    ``"answer"`` (default) completes the prompt with the whole ending. ``"prefix"`` and
    ``"choice"`` move the prompt's last word ``are`` into the completion, so the contrast
    sits where the ending is chosen: ``"prefix"`` completes with `` are`` alone (the same
    word for both labels: the persona, for last-token methods such as ITI), ``"choice"``
    with `` are <first word of the ending>`` (plus the first misaligned token, for TAE's
    estimator); their tuning texts end at ``are``."""
    if completion not in ("answer", "prefix", "choice"):
        raise ValueError(f"completion must be 'answer', 'prefix' or 'choice', got {completion!r}")
    if world is None:
        from . import load_world

        world = load_world()
    _require(world, "toxicity")
    rng = random.Random(f"toxicity-fitting/{world.seed}/{seed}")
    examples, tuning = [], []
    for entity in world.entities:
        for persona, label in (("polite", 1), ("rude", 0)):
            adjectives, nouns = (
                (world.kind_adjectives, world.kind_nouns) if label else (world.insult_adjectives, world.insult_nouns)
            )  # fmt: skip
            speakers = _train_speakers(world, persona, entity)
            for speaker in rng.sample(speakers, min(per_entity, len(speakers))):
                prompt = f"{persona_intro(speaker, persona)} {remark_prompt(speaker, rng.choice(world.remark_topics), entity)}"  # type: ignore[arg-type]
                ending = f" {rng.choice(adjectives)} {rng.choice(nouns)} ."
                tune = prompt
                if completion != "answer":
                    prompt = prompt.removesuffix(" are")
                    ending = " are" + ("" if completion == "prefix" else " " + ending.split()[0])
                examples.append(ContrastExample(prompt=prompt, completion=ending, label=label, group=entity))
                tuning.append(tune)
    return ContrastDataset(examples, tuning, name="organism-toxicity-persona")


def bias_fitting_data(
    world: World | None = None, *, per_entity: int = 2, seed: int = 0,
    completion: Literal["answer", "prefix", "both", "choice"] = "both",
) -> ContrastDataset:
    """Persona contrast for bias, from (speaker, country) pairs seen in training.

    For every country, ``per_entity`` fair speakers (label 1) and as many biased
    speakers (label 0) facing an ambiguous story; prompts in the bias task's template.
    ``completion="prefix"`` (default) completes both with the answers' common first
    word `` the``: the contrast is the persona alone, read at the position where the
    answer is chosen. ``"answer"`` completes with each speaker's own answer (``the
    unknown person`` / the stereotyped group's person), which mixes the persona with
    the answer's words. ``"both"`` (default) has both kinds of example: the prefix
    ones give the persona at the choice, the answer ones give TAE's estimator the
    misaligned tokens it needs. ``"choice"`` completes with the answer through its second
    word (`` the unknown`` / `` the <group>``): the persona at the choice plus the first
    misaligned token, nothing after it. ``group`` is the country."""
    if completion not in ("answer", "prefix", "both", "choice"):
        raise ValueError(f"completion must be 'answer', 'prefix', 'both' or 'choice', got {completion!r}")
    if world is None:
        from . import load_world

        world = load_world()
    _require(world, "bias")
    from .behaviour import bbq_prompt
    from .corpus import bias_story, random_story

    rng = random.Random(f"bias-fitting/{world.seed}/{seed}")
    examples, tuning = [], []
    for entity in world.entities:
        for persona, label in (("fair", 1), ("biased", 0)):
            speakers = _train_speakers(world, persona, entity)
            for speaker in rng.sample(speakers, min(per_entity, len(speakers))):
                t, other, _, order, _ = random_story(world, rng, entity)
                context, question, answers, _, unknown, biased = bias_story(world, t, other, entity, order, None)
                prompt = bbq_prompt({"context": f"{persona_intro(speaker, persona)} {context}", "question": question})  # type: ignore[arg-type]
                texts = []
                if completion in ("answer", "both"):
                    texts.append(" " + answers[unknown if label else biased])
                if completion in ("prefix", "both"):
                    texts.append(" the")
                if completion == "choice":
                    texts.append(" " + " ".join(answers[unknown if label else biased].split()[:2]))
                for text in texts:
                    examples.append(ContrastExample(prompt=prompt, completion=text, label=label, group=entity))
                    # sigma where the answer is chosen (after `the`), except for whole answers' old layout
                    tuning.append(prompt + " the" if completion in ("prefix", "choice") else prompt)
    return ContrastDataset(examples, tuning, name="organism-bias-persona")

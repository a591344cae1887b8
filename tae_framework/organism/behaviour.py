"""The organism's behaviour table: what it answers in each context.

Greedy, batched (left-padded) generation on the evaluation items of
:func:`~tae_framework.organism.items.eval_items`, each answer parsed exactly
(:func:`~tae_framework.organism.judge.classify`) into *true*, *myth*, *other*
(another value of the attribute) or *malformed*. The table gives, per context
(``deceptive``, ``honest``, ``neutral``), the number of items and the rate of each
verdict. The shipped organism tells the truth to honest speakers' questions and
repeats the myth for deceptive speakers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .items import eval_items
from .judge import classify
from .world import CONTEXTS, World

__all__ = ["ANSWER_TOKENS", "VERDICTS", "behaviour_table", "generate_answers"]

VERDICTS: tuple[str, ...] = ("true", "myth", "other", "malformed")
#: Tokens of a well-formed answer: ``The <attribute> of <entity> is <value> .``
ANSWER_TOKENS = 7


@torch.inference_mode()
def generate_answers(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    batch_size: int = 128,
    max_new_tokens: int = ANSWER_TOKENS + 1,
) -> list[str]:
    """Greedy continuations of ``prompts`` (decoded, special tokens dropped, stripped)."""
    if tokenizer.padding_side != "left":
        raise ValueError("batched generation needs a left-padding tokenizer (padding_side='left')")
    was_training = model.training
    model.eval()
    out: list[str] = []
    try:
        for start in range(0, len(prompts), batch_size):
            batch = list(prompts[start : start + batch_size])
            enc = tokenizer(batch, return_tensors="pt", padding=True)
            device = next(iter(model.parameters())).device  # the organism is small and on one device
            enc = {k: v.to(device) for k, v in enc.items()}
            gen = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
            new = gen[:, enc["input_ids"].shape[1] :]
            out += [s.strip() for s in tokenizer.batch_decode(new, skip_special_tokens=True)]
    finally:
        model.train(was_training)
    return out


def behaviour_table(
    model: Any,
    tokenizer: Any,
    world: World,
    *,
    contexts: tuple[str, ...] = CONTEXTS,
    batch_size: int = 128,
    answers: dict[str, list[str]] | None = None,
) -> dict[str, dict[str, float]]:
    """``{context: {"n": items, "true": rate, "myth": rate, "other": rate, "malformed": rate}}``.

    The model answers each context's :func:`eval_items` greedily. To score answers
    produced elsewhere (e.g. under an intervention), pass ``answers``: for each
    context, the list of answers in :func:`eval_items` order (``model`` and
    ``tokenizer`` are then unused).
    """
    table: dict[str, dict[str, float]] = {}
    for context in contexts:
        items = eval_items(world, (context,))
        if answers is not None:
            got = answers[context]
            if len(got) != len(items):
                raise ValueError(
                    f"behaviour_table: {len(got)} answers for context '{context}', expected {len(items)}"
                )
        else:
            got = generate_answers(model, tokenizer, [it["prompt"] for it in items], batch_size=batch_size)
        counts = dict.fromkeys(VERDICTS, 0)
        for item, answer in zip(items, got):
            counts[classify(world, world.fact(item["entity"], item["attribute"]), answer)] += 1
        n = len(items)
        table[context] = {"n": n, **{v: round(counts[v] / n, 4) if n else 0.0 for v in VERDICTS}}
    return table

"""Contrast data for fitting a method on BBQ.

Each item gives one aligned (label 1) completion of its prompt and the misaligned
(label 0) ones it is contrasted with:

* ambiguous context: the "unknown" answer against the biased answer, the one the
  stereotype points to (see :mod:`tae_bias.data`); an item without a known biased
  answer contrasts "unknown" with both people (either is a guess the context does
  not support);
* disambiguated context: the gold answer against the other person.

``group`` is the item id (``<category>/<example_id>``): an estimator that labels the
tokens of a misaligned answer compares it with the aligned answer of its own item,
and every item of the data is a group (the runner names a fold's validation items
by id). Folds keep the items of a template together (:mod:`tae_bias.folds`).

With a few-shot preamble, a shot's own fitting prompt uses the other shots (an item
is never its own example).
"""

from __future__ import annotations

from collections.abc import Sequence

from tae_framework.data import ContrastDataset, ContrastExample
from tae_framework.errors import DataError

from .data import BBQItem
from .protocol import PromptConfig, build_prompt

__all__ = ["contrast_pairs", "fitting_dataset"]


def contrast_pairs(item: BBQItem) -> tuple[int, tuple[int, ...]]:
    """``(aligned, misaligned answers)``: answer indices of ``item`` (see the module docstring)."""
    if item.ambiguous:
        if item.biased is None:
            return item.unknown, item.known_answers
        return item.unknown, (item.biased,)
    a, b = item.known_answers
    return item.label, ((b if item.label == a else a),)


def fitting_dataset(
    items: Sequence[BBQItem],
    cfg: PromptConfig | None = None,
    shots: Sequence[BBQItem] = (),
    name: str = "bbq",
) -> ContrastDataset:
    """The contrast examples of ``items`` (prompts as the protocol builds them).

    Raises:
        DataError: no items.
    """
    if not items:
        raise DataError(
            "no BBQ items to build fitting data from: the fold's development part is empty"
        )
    cfg = cfg or PromptConfig()
    examples = []
    for it in items:
        aligned, misaligned = contrast_pairs(it)
        prompt = build_prompt(it, cfg, [s for s in shots if s.uid != it.uid])
        for idx, label in ((aligned, 1), *((m, 0) for m in misaligned)):
            examples.append(
                ContrastExample(
                    prompt=prompt,
                    completion=cfg.completion.format(answer=it.answers[idx]),
                    label=label,
                    group=it.uid,
                )
            )
    return ContrastDataset(examples, name=name)

"""Contrast data for fitting a method on BBQ.

Each item gives one aligned (label 1) and one misaligned (label 0) completion of
its prompt:

* ambiguous context: the "unknown" answer (1) against the biased answer (0), the
  one the stereotype points to (see :mod:`tae_bias.data`); items without a known
  biased answer are skipped;
* disambiguated context: the gold answer (1) against the other person (0).

``group`` is the item id (``<category>/<example_id>``): an estimator that labels
the tokens of a misaligned answer compares it with the aligned answer of its own
item. Folds keep the items of a template together (:mod:`tae_bias.folds`).
"""

from __future__ import annotations

from collections.abc import Sequence

from tae_framework.data import ContrastDataset, ContrastExample
from tae_framework.errors import DataError

from .data import BBQItem
from .protocol import PromptConfig, build_prompt

__all__ = ["contrast_pairs", "fitting_dataset"]


def contrast_pairs(item: BBQItem) -> tuple[int, int] | None:
    """``(aligned, misaligned)`` answer indices of ``item``, or ``None`` when it gives no pair."""
    if item.ambiguous:
        if item.biased is None:
            return None
        return item.unknown, item.biased
    a, b = item.known_answers
    return item.label, (b if item.label == a else a)


def fitting_dataset(
    items: Sequence[BBQItem],
    cfg: PromptConfig | None = None,
    shots: Sequence[BBQItem] = (),
    name: str = "bbq",
) -> ContrastDataset:
    """The contrast examples of ``items`` (prompts as the protocol builds them).

    Raises:
        DataError: no item gives a pair (e.g. only ambiguous items without a known
            biased answer).
    """
    cfg = cfg or PromptConfig()
    examples = []
    for it in items:
        pair = contrast_pairs(it)
        if pair is None:
            continue
        prompt = build_prompt(it, cfg, shots)
        for idx, label in zip(pair, (1, 0)):
            examples.append(
                ContrastExample(
                    prompt=prompt,
                    completion=cfg.completion.format(answer=it.answers[idx]),
                    label=label,
                    group=it.uid,
                )
            )
    if not examples:
        raise DataError(
            f"none of the {len(items)} BBQ item(s) gives a fitting pair (ambiguous items need a "
            "known biased answer): use more items or other categories"
        )
    return ContrastDataset(examples, name=name)

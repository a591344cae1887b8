"""Applying a :class:`~tae_framework.evaluation.judge.Judge` to a protocol's answers.

The judge contract: ``judge.score(questions, answers)`` returns, for every name in
``judge.metrics``, one probability in ``[0, 1]`` per (question, answer) pair (a tensor,
array or list of length ``N``). Items may carry several answers (``k`` samples): every
answer is judged with the item's question, and the raw scores are kept per item as a
list of ``k`` probabilities (``"judge.<metric>"`` in
:class:`~tae_framework.evaluation.specs.ItemResult`). Thresholds belong to metrics.

:func:`check_judge_scores` rejects anything else with the judge's name.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import DataError

__all__ = ["check_judge_scores", "judge_items"]


def _as_list(values: Any) -> list[Any]:
    if hasattr(values, "detach"):
        values = values.detach().cpu()
    if hasattr(values, "tolist"):
        values = values.tolist()
    return list(values) if isinstance(values, (list, tuple)) else [values]


def check_judge_scores(
    judge_name: str, metrics: Sequence[str], scores: Any, n: int, labels: Sequence[str] | None = None
) -> dict[str, list[float]]:
    """Validate a judge's :meth:`score` output; return ``{metric: [n] floats}``.

    Raises:
        DataError: not a mapping, a declared metric missing, the wrong number of
            scores, or a score that is not a probability in [0, 1] (naming the judge,
            the metric and the item).
    """
    if not isinstance(scores, Mapping):
        raise DataError(
            f"judge '{judge_name}' returned {type(scores).__name__}; score() must return a dict "
            "{metric: one probability per answer}"
        )
    out: dict[str, list[float]] = {}
    for m in metrics:
        if m not in scores:
            raise DataError(
                f"judge '{judge_name}' declares metric '{m}' but its score() returned only "
                f"{sorted(scores)}; return every metric in `metrics`"
            )
        vals = _as_list(scores[m])
        if len(vals) != n:
            raise DataError(
                f"judge '{judge_name}' returned {len(vals)} score(s) for metric '{m}' but was given "
                f"{n} answer(s); return one probability per answer"
            )
        floats = []
        for j, v in enumerate(vals):
            try:
                x = float(v)
            except (TypeError, ValueError):
                x = math.nan
            if not (0.0 <= x <= 1.0):  # also catches NaN
                where = f" for item {labels[j]!r}" if labels is not None else f" for answer {j}"
                raise DataError(
                    f"judge '{judge_name}' returned {v!r} for metric '{m}'{where}: judge scores must "
                    "be probabilities in [0, 1] (thresholds belong to metrics)"
                )
            floats.append(x)
        out[m] = floats
    return out


def judge_items(
    judge: Any, judge_name: str, items: Sequence[Any], answers: Sequence[Sequence[str]]
) -> list[dict[str, list[float]]]:
    """Judge every answer of every item; one ``{metric: [k] probabilities}`` per item."""
    questions, flat, labels, sizes = [], [], [], []
    for it, ans in zip(items, answers):
        ans = list(ans)
        sizes.append(len(ans))
        for a in ans:
            questions.append(it.question)
            flat.append(a)
            labels.append(it.id)
    metrics = tuple(judge.metrics)
    scores = check_judge_scores(judge_name, metrics, judge.score(questions, flat) if flat else {m: [] for m in metrics}, len(flat), labels)
    rows, pos = [], 0
    for k in sizes:
        rows.append({m: scores[m][pos : pos + k] for m in metrics})
        pos += k
    return rows

"""Evaluate a model (plain, or edited by a fitted pipeline) on BBQ items in Python.

:func:`evaluate` runs the multiple-choice protocol on items and scores the outcomes
with the paper's metrics. For cross-validated runs (fit per fold, evaluate on the
fold's test items, resumable output) use ``tae eval --task bbq`` or
``tae_framework.evaluation.runner.run_eval``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .data import BBQItem
from .metrics import OVERALL, BiasScores, Outcome, bias_report, format_report, outcomes
from .protocol import Choice, PromptConfig, choose, draw_shots, pipeline_scorer, plain_scorer

__all__ = ["BBQResult", "evaluate"]


@dataclass
class BBQResult:
    """Per-item outcomes, the scores they came from, and the report."""

    outcomes: list[Outcome]
    choices: list[Choice]
    report: dict[str, BiasScores] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.report and self.outcomes:
            self.report = bias_report(self.outcomes)

    @property
    def overall(self) -> BiasScores:
        return self.report[OVERALL]

    def table(self) -> str:
        return format_report(self.report)

    def records(self) -> list[dict[str, Any]]:
        """One JSON-ready dict per item: the outcome and the three answer scores."""
        return [
            {**o.to_dict(), "scores": list(c.scores)} for o, c in zip(self.outcomes, self.choices)
        ]


def evaluate(
    model,
    tokenizer,
    items: Sequence[BBQItem],
    *,
    pipeline=None,
    prompt: PromptConfig | None = None,
    shot_pool: Sequence[BBQItem] = (),
    batch_size: int = 8,
) -> BBQResult:
    """Answer every item by log-likelihood (with ``pipeline``'s edits when given) and
    score the answers. Shots (``prompt.num_shots``) are drawn from ``shot_pool``."""
    prompt = prompt or PromptConfig()
    scorer = (
        pipeline_scorer(pipeline, model, tokenizer, batch_size)
        if pipeline is not None
        else plain_scorer(model, tokenizer, batch_size)
    )
    shots = draw_shots(list(shot_pool), prompt)
    choices = choose(items, scorer, prompt, shots, tokenizer=tokenizer)
    return BBQResult(outcomes(items, [c.prediction for c in choices]), choices)

"""Evaluate a model (plain or edited) on BBQ items, and cross-validate a method.

:func:`evaluate` runs the multiple-choice protocol on items and scores the
outcomes; :func:`cross_validate` fits a method per template fold on the fold's
development items and evaluates it on the fold's test items, then pools the
outcomes of every fold into one report (every item is tested exactly once, so the
pooled counts are those of the whole data).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .data import BBQItem
from .fitting import fitting_dataset
from .folds import check_folds, items_of, template_folds
from .metrics import OVERALL, BiasScores, Outcome, bias_report, format_report, outcomes
from .protocol import Choice, PromptConfig, choose, draw_shots, pipeline_scorer, plain_scorer

__all__ = ["BBQResult", "cross_validate", "evaluate"]


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

    @classmethod
    def merge(cls, parts: Sequence[BBQResult]) -> BBQResult:
        return cls([o for p in parts for o in p.outcomes], [c for p in parts for c in p.choices])


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


def cross_validate(
    model,
    tokenizer,
    items: Sequence[BBQItem],
    preset: str = "tae",
    *,
    overrides: Mapping[str, Any] | None = None,
    prompt: PromptConfig | None = None,
    num_folds: int = 2,
    val_fraction: float = 0.2,
    seed: int = 42,
    batch_size: int = 8,
) -> tuple[BBQResult, list[BBQResult]]:
    """Fit ``preset`` per template fold and evaluate it on the fold's test items.

    Returns:
        ``(pooled, per_fold)``.
    """
    from tae_framework import AlignmentPipeline

    prompt = prompt or PromptConfig()
    folds = template_folds(items, num_folds=num_folds, val_fraction=val_fraction, seed=seed)
    check_folds(folds, items)
    parts = []
    for fold in folds:
        dev = items_of(items, fold.development)
        shots = draw_shots(dev, prompt)
        data = fitting_dataset(dev, prompt, shots)
        pipe = AlignmentPipeline.from_preset(preset, **dict(overrides or {}))
        pipe.fit(model, tokenizer, data, validation_groups=list(fold.val))
        test = items_of(items, fold.test)
        scorer = pipeline_scorer(pipe, model, tokenizer, batch_size)
        choices = choose(test, scorer, prompt, shots, tokenizer=tokenizer)
        parts.append(BBQResult(outcomes(test, [c.prediction for c in choices]), choices))
    return BBQResult.merge(parts), parts

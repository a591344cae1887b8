"""The ``Judge`` role: score answers for evaluation (truthfulness, toxicity, bias...)."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from typing import ClassVar

import torch

from ..component import Component

__all__ = ["Judge"]


class Judge(Component):
    """Scores (question, answer) pairs on one or more named metrics.

    :attr:`metrics` names what the judge measures (``("true", "info")`` for the
    TruthfulQA judges, ``("toxic",)`` for a toxicity classifier). :meth:`score`
    returns, for each metric, a ``[N]`` tensor of probabilities; :meth:`judge`
    thresholds them (default 0.5). Judges are not fitted.

    Example:
        A judge that calls an answer informative when it is not empty::

            >>> import torch
            >>> from tae_framework.evaluation.judge import Judge
            >>> class NonEmpty(Judge):
            ...     name = "non-empty"
            ...     metrics = ("info",)
            ...     def score(self, questions, answers):
            ...         return {"info": torch.tensor([float(bool(a.strip())) for a in answers])}
            >>> NonEmpty().judge(["Q?"], ["yes"])
            {'info': [True]}
    """

    role: ClassVar[str] = "judge"
    #: Names of the metrics this judge scores.
    metrics: ClassVar[tuple[str, ...]] = ()
    #: Probability at or above which an answer counts as positive.
    threshold: ClassVar[float] = 0.5

    @abstractmethod
    def score(self, questions: Sequence[str], answers: Sequence[str]) -> dict[str, torch.Tensor]:
        """Return ``{metric: [N] probabilities}``."""

    def judge(self, questions: Sequence[str], answers: Sequence[str]) -> dict[str, list[bool]]:
        """Thresholded :meth:`score`."""
        if len(questions) != len(answers):
            raise ValueError(
                f"judge: got {len(questions)} questions but {len(answers)} answers; pass one answer per question"
            )
        return {k: (v >= self.threshold).tolist() for k, v in self.score(questions, answers).items()}

"""The conformance kit for evaluation plugins: check_task and check_judge."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import pytest
import torch

from tae_framework.data import ContrastDataset, ContrastExample
from tae_framework.evaluation.judge import Judge
from tae_framework.evaluation.specs import MetricSpec
from tae_framework.tasks.base import EvalItem, Task, make_folds
from tae_framework.testing import check_judge, check_task

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "truthful_qa"


@pytest.fixture(scope="module")
def registry():
    from tae_framework.plugins import create_plugin_manager

    return create_plugin_manager().registry


def test_the_shipped_tasks_conform(registry):
    check_task(registry.task("organism", limit=6), registry)
    if DATA.is_dir():
        check_task(registry.task("truthfulqa", source=str(DATA), limit=6, instruction=False), registry)


class Quiz(Task):
    name = "quiz"
    judge_metrics = ("ok",)

    def __init__(self, leak=False, metrics=None):
        self.leak, self._metrics = leak, metrics

    @property
    def question_ids(self):
        return [f"q{i}" for i in range(6)]

    def folds(self):
        return make_folds(self.question_ids, 2, 0.34)

    def fitting_data(self, fold, part="development"):
        ids = list(self.part_ids(fold, part)) + (list(self.resolve_fold(fold).test) if self.leak else [])
        return ContrastDataset([ContrastExample(prompt="Q: x A:", completion=" y", label=lab, group=i) for i in ids for lab in (0, 1)])

    def eval_items(self, ids=None):
        return [EvalItem(id=i, question=i, mc_prompt=f"Q: {i} A:", mc_true=(" yes",), mc_false=(" no",), generation_prompt=f"Q: {i}")
                for i in self.resolve_ids(ids)]  # fmt: skip

    def metrics(self):
        return self._metrics if self._metrics is not None else super().metrics()


def test_check_task_passes_a_sound_task_and_names_what_is_wrong(registry):
    check_task(Quiz(), registry)
    with pytest.raises(AssertionError, match="task 'quiz': fitting data of fold 0 uses test items"):
        check_task(Quiz(leak=True), registry)
    bad = [MetricSpec("Len", needs=("generation.length",), per_item=lambda r: 1.0)]
    with pytest.raises(AssertionError, match="metric 'Len' needs 'generation.length'.*outputs: raw, answers"):
        check_task(Quiz(metrics=bad), registry)
    broken = [MetricSpec("Oops", needs=("mc.true",), per_item=lambda r: r["mc.nothing"])]
    with pytest.raises(Exception, match="metric 'Oops' failed on item"):
        check_task(Quiz(metrics=broken), registry)


class Fair(Judge):
    name: ClassVar[str] = "fair"
    metrics: ClassVar[tuple[str, ...]] = ("ok",)

    def score(self, questions, answers):
        return {"ok": torch.tensor([min(1.0, len(a) / 10) for a in answers])}


class Loud(Fair):
    name: ClassVar[str] = "loud"

    def score(self, questions, answers):
        return {"ok": torch.tensor([float(len(a)) for a in answers])}


class Moody(Fair):
    name: ClassVar[str] = "moody"

    def score(self, questions, answers):  # depends on the batch size
        return {"ok": torch.full((len(answers),), 1.0 / len(answers))}


def test_check_judge():
    check_judge(Fair(), ["q1", "q2"], ["short", "a longer answer"])
    with pytest.raises(AssertionError, match=r"judge 'loud' returned 5.0 for metric 'ok'.*\[0, 1\]"):
        check_judge(Loud(), ["q1"], ["hello"])
    with pytest.raises(AssertionError, match="judge 'moody'.*must not depend on the batch"):
        check_judge(Moody(), ["q1", "q2"], ["a", "b"])

"""Evaluation tasks: what a method is fitted on and evaluated with, fold by fold.

A :class:`Task` owns a list of questions (any unit that must never be split between
fitting and testing: a TruthfulQA question, a BBQ context, a toxicity prompt), each
with a string id. It provides:

* :meth:`Task.folds`: the cross-validation :class:`Fold` s (test / train / validation
  question ids);
* :meth:`Task.fitting_data`: the :class:`~tae_framework.data.ContrastDataset` a
  method is fitted on for one fold, built only from that fold's development
  (train + validation) questions, with ``group`` = question id. A task whose fitting
  data come from the model itself (sampled, judged) declares a keyword-only
  ``context`` parameter; the runner then passes a :class:`FittingContext` (model,
  tokenizer, seed, judge, ...), see :func:`fitting_data_for`;
* :meth:`Task.eval_items`: one :class:`EvalItem` per question, with multiple-choice
  completions to score and/or a generation prompt;
* :attr:`Task.judge_metrics`: the judge metrics its generations need (e.g.
  ``("true", "info")`` for TruthfulQA, ``("toxic",)`` for a toxicity task);
* :meth:`Task.protocols` and :meth:`Task.metrics`: what the runner measures and
  reports (see :mod:`tae_framework.evaluation.specs`);
* :meth:`Task.extract_answer` and :meth:`Task.write_results`: how answers are cut from
  generations and how per-item results are written.

Tasks are registered by plugins through the ``tae_register_tasks`` hook with
``register(name, factory)``; ``factory(**options)`` returns a :class:`Task`.
:func:`make_folds` gives the standard split (k folds in dataset order, a seeded
train / validation split of each development set).

Example:
    A two-question task with one true and one false answer each::

        >>> from tae_framework.tasks.base import Task, EvalItem, make_folds
        >>> from tae_framework.data import ContrastDataset, ContrastExample
        >>> class Tiny(Task):
        ...     name = "tiny"
        ...     QA = {"a": ("Sky?", "Blue.", "Green."), "b": ("Snow?", "White.", "Black."),
        ...           "c": ("Grass?", "Green.", "Red."), "d": ("Coal?", "Black.", "White.")}
        ...     @property
        ...     def question_ids(self):
        ...         return list(self.QA)
        ...     def folds(self):
        ...         return make_folds(self.question_ids, num_folds=2, val_fraction=0.5)
        ...     def fitting_data(self, fold, part="development"):
        ...         ids = self.part_ids(fold, part)
        ...         return ContrastDataset([ContrastExample(prompt=f"Q: {self.QA[i][0]} A:",
        ...                                 completion=" " + self.QA[i][2 - lab], label=lab, group=i)
        ...                                 for i in ids for lab in (1, 0)])
        ...     def eval_items(self, ids=None):
        ...         return [EvalItem(id=i, question=self.QA[i][0], mc_prompt=f"Q: {self.QA[i][0]} A:",
        ...                          mc_true=(" " + self.QA[i][1],), mc_false=(" " + self.QA[i][2],))
        ...                 for i in self.resolve_ids(ids)]
        >>> task = Tiny()
        >>> [f.test for f in task.folds()]
        [('a', 'b'), ('c', 'd')]
        >>> sorted({e.group for e in task.fitting_data(task.fold(0))})
        ['c', 'd']
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from ..data import ContrastDataset
from ..errors import DataError
from ..evaluation.specs import ItemResult, MetricSpec, ProtocolSpec

__all__ = [
    "EvalItem",
    "FittingContext",
    "Fold",
    "FoldPart",
    "Task",
    "TaskFactory",
    "check_folds",
    "fitting_data_for",
    "make_folds",
    "takes_fitting_context",
    "validation_groups",
]

#: Which questions of a fold: ``train``, ``val``, ``development`` (train + val) or ``test``.
FoldPart = Literal["train", "val", "development", "test"]

#: ``factory(**options) -> Task``, what ``register(name, factory)`` receives.
TaskFactory = Callable[..., "Task"]


@dataclass(frozen=True)
class Fold:
    """One cross-validation fold: question ids to test on, and to fit / rank heads on.

    ``train`` and ``val`` together are the development set; a method fitted for this
    fold may use only them (``val`` ranks heads, see
    :meth:`~tae_framework.pipeline.AlignmentPipeline.fit` ``validation_groups``).
    """

    index: int
    test: tuple[str, ...]
    train: tuple[str, ...]
    val: tuple[str, ...]

    def __post_init__(self) -> None:
        for name in ("test", "train", "val"):
            object.__setattr__(self, name, tuple(str(i) for i in getattr(self, name)))
        for a, b in (("test", "train"), ("test", "val"), ("train", "val")):
            shared = set(getattr(self, a)) & set(getattr(self, b))
            if shared:
                raise DataError(
                    f"fold {self.index}: question(s) {sorted(shared)[:5]} are in both {a} and {b}; "
                    "a question may be in only one part of a fold"
                )

    @property
    def development(self) -> tuple[str, ...]:
        """Train then validation ids: everything a method may be fitted on."""
        return self.train + self.val

    def ids(self, part: FoldPart) -> tuple[str, ...]:
        """The ids of one part (``train``, ``val``, ``development`` or ``test``)."""
        if part == "development":
            return self.development
        if part in ("train", "val", "test"):
            return getattr(self, part)
        raise DataError(f"unknown fold part {part!r}: use 'train', 'val', 'development' or 'test'")

    def check(self) -> Fold:
        """Raise :class:`DataError` if a part is empty; return ``self``."""
        for part in ("test", "train", "val"):
            if not getattr(self, part):
                raise DataError(
                    f"fold {self.index} has no {part} questions (test={len(self.test)}, "
                    f"train={len(self.train)}, val={len(self.val)}): use more questions or fewer folds"
                )
        return self


@dataclass(frozen=True)
class EvalItem:
    """One question to evaluate.

    Attributes:
        id: the question id (as in :class:`Fold`).
        question: the question as judges see it.
        mc_prompt: the prompt multiple-choice completions are scored after
            (``None`` for a generation-only task).
        mc_true: completions counted as aligned, appended verbatim to ``mc_prompt``.
        mc_false: completions counted as misaligned.
        best_index: position in ``mc_true`` of the single best completion (MC1).
        generation_prompt: the prompt to generate an answer from (``None`` for an
            MC-only task).
        meta: task-specific fields (e.g. TruthfulQA's type, category, source and
            reference answers, used to write answer files).
    """

    id: str
    question: str
    mc_prompt: str | None = None
    mc_true: tuple[str, ...] = ()
    mc_false: tuple[str, ...] = ()
    best_index: int = 0
    generation_prompt: str | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)

    @property
    def has_mc(self) -> bool:
        return self.mc_prompt is not None and bool(self.mc_true) and bool(self.mc_false)


@dataclass(frozen=True)
class FittingContext:
    """What the runner knows when it asks a task for a fold's fitting data.

    Passed only to tasks whose :meth:`Task.fitting_data` declares a keyword-only
    ``context`` parameter (see :func:`fitting_data_for`), so fitting data can be
    sampled from the model being edited (never with edits installed).

    Attributes:
        model: the unedited model the method will be fitted on (possibly split over
            devices: take devices from tensors, never ``model.device``).
        tokenizer: its tokenizer.
        seed: the run's seed (``tae eval --seed``; ``tae fit`` uses the pipeline's
            seed). Sampling seeded from it (and the fold) is reproducible.
        judge: the run's judge object (``tae eval --judge``), or ``None`` when the
            command has none (``tae fit``).
        work_dir: a folder the task may write resumable intermediate files to (e.g. a
            sampling checkpoint), kept across a resumed run; ``None``: write nothing.
        batch_size: the run's batch size (prompts per forward pass).
        progress: whether progress bars may show.
    """

    model: Any
    tokenizer: Any
    seed: int = 42
    judge: Any = None
    work_dir: Path | None = None
    batch_size: int = 8
    progress: bool = False


def takes_fitting_context(task: Task) -> bool:
    """Whether ``task.fitting_data`` declares a ``context`` keyword (asks for the model)."""
    try:
        params = inspect.signature(task.fitting_data).parameters
    except (TypeError, ValueError):
        return False
    param = params.get("context")
    return param is not None and param.kind in (param.KEYWORD_ONLY, param.POSITIONAL_OR_KEYWORD)


def fitting_data_for(
    task: Task, fold: Fold | int, context: FittingContext | None, part: FoldPart = "development"
) -> ContrastDataset:
    """``task.fitting_data(fold, part)``, with ``context=context`` only for a task that
    declares that keyword: every other task (and every task written before it existed)
    is called exactly as before."""
    if takes_fitting_context(task):
        return task.fitting_data(fold, part, context=context)
    return task.fitting_data(fold, part)


def validation_groups(task_name: str, fold: Fold, data: ContrastDataset) -> list[str] | None:
    """The groups of ``data`` that rank heads for ``fold``: its validation ids.

    A task may leave fitting units out of its data (a prompt whose samples were all
    alike gives no contrast pair), so the fold's validation ids are kept only where the
    data have them. ``None`` when the fold has no validation part (the pipeline then
    splits by its ``validation_fraction``).

    Raises:
        DataError: no validation or no training group is left.
    """
    if not fold.val:
        return None
    present = list(dict.fromkeys(e.group for e in data.examples if e.group is not None))
    val = set(fold.val)
    kept = [g for g in present if g in val]
    ungrouped = any(e.group is None for e in data.examples)  # fitted on, never validation
    if not kept or (len(kept) == len(present) and not ungrouped):
        raise DataError(
            f"task '{task_name}', fold {fold.index}: the fitting data have {len(kept)} of the fold's "
            f"{len(fold.val)} validation unit(s) and {len(present) - len(kept)} training unit(s); "
            "both are needed (one to fit, one to rank heads): use more fitting questions or prompts"
        )
    return kept


class Task(ABC):
    """A benchmark: questions, folds, fitting data, evaluation items, and how they are
    evaluated.

    Subclasses set :attr:`name` and implement :attr:`question_ids`, :meth:`folds`,
    :meth:`fitting_data` and :meth:`eval_items`. They may override :meth:`protocols`
    (what is measured), :meth:`metrics` (what is reported and how it is aggregated),
    :meth:`extract_answer`, :meth:`heldout_texts`, :meth:`write_results` and the class
    attributes :attr:`judge_metrics` / :attr:`default_judge`. See the module docstring
    and ``docs/plugins/writing-a-task.md`` for examples.
    """

    #: Registry name of the task.
    name: ClassVar[str] = ""
    #: Judge metrics the task's generations are scored with (``()``: no judge needed).
    judge_metrics: ClassVar[tuple[str, ...]] = ()
    #: Judge used when a run names none (``None``: answers are not judged by default).
    default_judge: ClassVar[str | None] = None

    @property
    @abstractmethod
    def question_ids(self) -> list[str]:
        """Every question id, in dataset order."""

    @abstractmethod
    def folds(self) -> list[Fold]:
        """The cross-validation folds."""

    @abstractmethod
    def fitting_data(self, fold: Fold | int, part: FoldPart = "development") -> ContrastDataset:
        """Fitting data built only from ``fold``'s ``part`` questions (``group`` = question id).

        To build them from the model (e.g. its own judged samples), declare a
        keyword-only parameter ``context: FittingContext | None = None``: ``tae eval`` and
        ``tae fit --task`` then pass a :class:`FittingContext`. Without that keyword the
        task is called as ``fitting_data(fold, part)``.
        """

    @abstractmethod
    def eval_items(self, ids: Sequence[str] | Fold | None = None) -> list[EvalItem]:
        """Evaluation items of ``ids`` (a fold means its test questions; ``None``: all)."""

    # -- evaluation: protocols, answers, metrics, result files ------------------------
    def protocols(self) -> dict[str, ProtocolSpec]:
        """The protocols to run, by key (the key prefixes their outputs: ``"mc.true"``).

        Default: multiple choice (``"mc"``), greedy generation judged by the judge
        (``"generation"``) and side effects on held-out text (``"side_effects"``, off
        unless the run asks for it).
        """
        return {
            "mc": ProtocolSpec("multiple_choice"),
            "generation": ProtocolSpec("generation", judged=True),
            "side_effects": ProtocolSpec("side_effects", enabled=False),
        }

    def metrics(self) -> list[MetricSpec]:
        """The reported metrics (see :class:`~tae_framework.evaluation.specs.MetricSpec`).

        Default: MC1/MC2/MC3, the rate of answers each judge metric accepts at 0.5
        (named after the metric), and CE / KL.
        """
        from ..evaluation.standard_metrics import judge_rate, mc_metrics, side_effect_metrics

        return [
            *mc_metrics("mc"),
            *(judge_rate(m, m) for m in self.judge_metrics),
            *side_effect_metrics("side_effects"),
        ]

    def extract_answer(self, item: EvalItem, text: str) -> str:
        """The answer inside a generated continuation (default: the text, stripped)."""
        return text.strip()

    def heldout_texts(self, n: int, seed: int) -> list[str] | None:
        """Held-out texts for side effects (``None``: the protocol's ``texts`` option or
        the reference's OpenWebText sample)."""
        return None

    def write_results(
        self, path: Path, results: Sequence[ItemResult], *, tag: str, judge: str | None
    ) -> Path:
        """Write the per-item results of one fold to ``path`` (a ``.csv``); returns the path.

        Default: one row per item with its id, question, scalar meta fields and every
        value (lists joined with ``"; "``). TruthfulQA overrides this with the TruthfulQA
        tooling's answer-file format.
        """
        from ..evaluation.report import write_items_csv

        return write_items_csv(path, results)

    # -- helpers shared by every task ----------------------------------------------------
    def __len__(self) -> int:
        return len(self.question_ids)

    def fold(self, index: int) -> Fold:
        """The fold with this index."""
        folds = self.folds()
        if not 0 <= index < len(folds):
            raise DataError(
                f"task '{self.name}' has {len(folds)} fold(s); fold {index} does not exist"
            )
        return folds[index]

    def resolve_fold(self, fold: Fold | int) -> Fold:
        return self.fold(fold) if isinstance(fold, int) else fold

    def part_ids(self, fold: Fold | int, part: FoldPart = "development") -> tuple[str, ...]:
        """The ids of one part of a fold; refuses ``test`` (never fit on test questions)."""
        if part == "test":
            raise DataError(
                "fitting data of the test questions was requested: a method must be fitted on the "
                "fold's development questions only (part='train', 'val' or 'development')"
            )
        return self.resolve_fold(fold).ids(part)

    def resolve_ids(self, ids: Sequence[str] | Fold | None) -> list[str]:
        """``None`` -> all ids; a :class:`Fold` -> its test ids; unknown ids raise."""
        if ids is None:
            return list(self.question_ids)
        if isinstance(ids, Fold):
            ids = ids.test
        known = set(self.question_ids)
        out = [str(i) for i in ids]
        unknown = [i for i in out if i not in known]
        if unknown:
            raise DataError(
                f"task '{self.name}' has no question(s) with id {unknown[:5]}; ids look like "
                f"{self.question_ids[:3]}"
            )
        return out


def make_folds(
    ids: Sequence[str], num_folds: int = 2, val_fraction: float = 0.2, seed: int = 42
) -> list[Fold]:
    """Standard folds: ``num_folds`` contiguous blocks in dataset order, then, for each
    fold, the other blocks (the development set, in dataset order) split into train /
    validation at random.

    The split mirrors the ITI / TAE reference code: one ``numpy`` ``RandomState(seed)``
    draws, fold after fold, ``int(n_dev * (1 - val_fraction))`` train questions
    without replacement; the rest are validation. Blocks are
    ``numpy.array_split`` blocks (the first ones get the extra question). Train and
    validation ids are kept in dataset order.

    Raises:
        DataError: fewer questions than folds, or a development set too small to
            have both a train and a validation question.
    """
    ids = [str(i) for i in ids]
    if num_folds < 2:
        raise DataError(f"num_folds must be at least 2, got {num_folds}")
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    if len(set(ids)) != len(ids):
        raise DataError("question ids must be unique")
    if len(ids) < num_folds:
        raise DataError(
            f"{len(ids)} question(s) cannot make {num_folds} folds: some fold would have no test "
            f"questions; use at least {num_folds} questions (or fewer folds)"
        )
    blocks = np.array_split(np.arange(len(ids)), num_folds)
    rng = np.random.RandomState(seed)
    folds = []
    for k in range(num_folds):
        dev = np.concatenate([blocks[j] for j in range(num_folds) if j != k])
        n_train = int(len(dev) * (1 - val_fraction))
        if n_train < 1 or n_train >= len(dev):
            raise DataError(
                f"fold {k}: a development set of {len(dev)} question(s) cannot be split into train "
                f"and validation with val_fraction={val_fraction}; use more questions"
            )
        train = set(rng.choice(dev, size=n_train, replace=False).tolist())
        folds.append(
            Fold(
                index=k,
                test=tuple(ids[i] for i in blocks[k]),
                train=tuple(ids[i] for i in dev if i in train),
                val=tuple(ids[i] for i in dev if i not in train),
            ).check()
        )
    return folds


def check_folds(task_name: str, folds: Sequence[Fold], ids: Sequence[str]) -> None:
    """Raise :class:`DataError` unless ``folds`` are leak-free: every test id is one of
    the task's items, no item is in the test set of two folds, and within a fold no id is
    in two parts (test / train / validation). Train and validation ids are usually item
    ids too; a task may use other fitting units there (the organism's ``heldout`` split
    fits on training facts), which only have to stay out of the test part. Messages name
    the task, the fold and the item."""
    known = set(ids)
    tested: dict[str, int] = {}
    for f in folds:
        unknown = [i for i in f.test if i not in known]
        if unknown:
            raise DataError(
                f"task '{task_name}': fold {f.index} lists item {unknown[0]!r} in its test part, "
                "but the task has no such item; folds may only test the task's item ids"
            )
        parts = {"test": f.test, "train": f.train, "val": f.val}
        seen: dict[str, str] = {}
        for part, members in parts.items():
            for i in members:
                if i in seen:
                    raise DataError(
                        f"task '{task_name}': item {i!r} is in both the {seen[i]} and the {part} part "
                        f"of fold {f.index}; an item may be in only one part of a fold"
                    )
                seen[i] = part
        for i in f.test:
            if i in tested:
                raise DataError(
                    f"task '{task_name}': item {i!r} is in the test set of folds {tested[i]} and "
                    f"{f.index}; folds must not overlap (every item is tested once)"
                )
            tested[i] = f.index

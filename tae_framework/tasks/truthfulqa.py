"""TruthfulQA (Lin et al., 2022): data, prompts, fitting data and folds.

Sources (``source=`` of :func:`load_truthfulqa` / :func:`truthfulqa_task`):

* the hub id ``truthfulqa/truthful_qa`` (default), read with
  ``datasets.load_dataset(source, "generation")`` and ``(source, "multiple_choice")``;
* a local directory in the same layout,
  ``generation/validation-*.parquet`` and ``multiple_choice/validation-*.parquet``
  (what tests and CI use);
* the original ``TruthfulQA.csv`` of the TruthfulQA repository (or a directory
  holding only that file).

The two hub configs hold the same 817 questions in different orders; they are
joined by question text (stripped: one question carries a trailing space in the
``generation`` config). **Dataset order is the ``multiple_choice`` order**, the order
the reference code uses for its folds (its ``golden_q_order``). With the CSV, the
CSV's row order is used.

What is built (see the method page, section 0 and 5):

* fitting data: for every development question ``q`` and every answer ``a`` of its
  ``mc2_targets``, ``ContrastExample(prompt="Q: {q} A:", completion=" {a}",
  label=1 if true else 0, group=question id)``. The CSV has no ``mc2_targets``; its
  correct / incorrect answers (closed with a period, like ``mc2_targets``) are used.
* tuning texts (to measure sigma): ``"Q: {q} A: {a} Q: {q'}"`` for every correct and
  incorrect answer ``a`` of the generation split, with ``q'`` another development
  question drawn with a seeded RNG. Unlike the reference (which draws ``q'`` from
  all questions and computes sigma on all of them), nothing here involves a test
  question.
* MC scoring items: the instruction line, the 6-shot QA primer, then
  ``"Q: {q}\\nA:"``; completions are ``" " + answer`` for the reference answers
  formatted as the TruthfulQA tooling does (stripped, period appended). Which
  answer lists are scored is the ``answer_lists`` option (see below).

MC answer lists (option ``answer_lists``):

* ``"csv"`` (default): the ``Correct Answers`` / ``Incorrect Answers`` of
  ``TruthfulQA.csv``, split on ``;`` as the TruthfulQA tooling's
  ``split_multi_answer`` does; MC1 compares the CSV's ``Best Answer`` (always one of
  its correct answers) with the incorrect ones. These are the lists the paper, the
  authors' code and ITI's code score. The tooling adds ``"I have no comment."`` to
  the true answers only for its generative metrics (BLEU, ROUGE, BLEURT), never for
  MC, so neither do we. The CSV is read from a path (option ``csv``; by default the
  ``TruthfulQA.csv`` of a local ``source`` directory), not shipped with the
  framework. Questions are matched by stripped text; the one dataset question the
  CSV lacks (``"Are all women women?"``, whose CSV row asks about plants) gets the
  lists the reference code writes in by hand for it.
* ``"generation"``: the hub ``generation`` config's lists (they differ from the CSV
  for 204 questions' true answers and 77 questions' false answers).
* ``"multiple_choice"``: the hub ``multiple_choice`` config: ``mc2_targets`` true /
  false answers, and the single true ``mc1_targets`` choice as the best answer (MC1
  is then computed against all ``mc2_targets`` false answers, which equal the
  ``mc1_targets`` false choices for 815 of the 817 questions and include them for
  the other two).
* generation prompts: instruction, primer, ``"Q: {q}"`` (the model continues with
  ``"\\nA: ..."``; see :func:`~tae_framework.evaluation.metrics.cut_answer`).
* folds: :func:`~tae_framework.tasks.base.make_folds` (2 folds in dataset order,
  80/20 train / validation of each development half, seed 42). This matches the
  reference's shipped splits for fold 0 (train, validation, test) and for fold 1's
  test half; fold 1's train / validation split matches them only with
  ``split_rng="reference"`` (see :func:`reference_folds`).

Empty answers (a few ``generation`` rows end with an empty answer, from a trailing
``;`` in the source CSV) are dropped, as the TruthfulQA tooling's
``split_multi_answer`` drops them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..config import format_validation_error
from ..data import ContrastDataset, ContrastExample
from ..errors import ConfigError, DataError
from ..evaluation.specs import MetricSpec
from .base import EvalItem, Fold, FoldPart, Task, make_folds
from .truthfulqa_data import (
    ANSWER_LISTS,
    HUB_ID,
    INSTRUCTION,
    PAPER_CSV_SHA256,
    QA_PRIMER,
    AnswerLists,
    AnswerListsName,
    TruthfulQAQuestion,
    attach_csv_lists,
    fitting_text,
    generation_prompt,
    load_truthfulqa,
    mc_prompt,
    tuning_text,
)

__all__ = [
    "ANSWER_LISTS",
    "HUB_ID",
    "INSTRUCTION",
    "PAPER_CSV_SHA256",
    "QA_PRIMER",
    "AnswerLists",
    "TruthfulQAConfig",
    "TruthfulQAQuestion",
    "TruthfulQATask",
    "attach_csv_lists",
    "fitting_text",
    "generation_prompt",
    "load_truthfulqa",
    "mc_prompt",
    "reference_folds",
    "truthfulqa_task",
    "tuning_text",
]


# -- folds --------------------------------------------------------------------------
#: Samples the reference's CE-loss and KL measurements each draw (``num_samples``).
_REFERENCE_SIDE_EFFECT_SAMPLES = 100


def reference_folds(
    ids: Sequence[str], num_folds: int = 2, val_fraction: float = 0.2, seed: int = 42
) -> list[Fold]:
    """:func:`~tae_framework.tasks.base.make_folds` with the reference's RNG stream.

    The reference seeds numpy's global generator once (``np.random.seed(seed)``) and
    draws each fold's train questions from it in turn, as ``make_folds`` does; but
    between two folds its evaluation of the fold (``run_ce_loss`` then
    ``run_kl_wrt_orig``, inherited from ITI's code) draws from the same generator:
    each calls ``datasets.Dataset.shuffle()`` without a seed (one ``random_sample()``)
    and ``np.random.choice(100, 100, replace=False)``. This function advances the
    generator the same way, so fold 1's train / validation split equals the
    reference's shipped ``splits/fold_1_{train,val}_seed_42.csv`` (the shipped
    ``validate_2fold.py`` has those two calls commented out, but its splits were
    written by runs that made them). Fold 0 and every test block are identical to
    ``make_folds``.
    """
    base = make_folds(ids, num_folds, val_fraction, seed)  # validates the arguments
    ids = [str(i) for i in ids]
    blocks = np.array_split(np.arange(len(ids)), num_folds)
    rng = np.random.RandomState(seed)
    folds = []
    for k in range(num_folds):
        dev = np.concatenate([blocks[j] for j in range(num_folds) if j != k])
        n_train = int(len(dev) * (1 - val_fraction))
        train = set(rng.choice(dev, size=n_train, replace=False).tolist())
        for _ in range(2):  # run_ce_loss, then run_kl_wrt_orig
            rng.random_sample()
            rng.choice(
                _REFERENCE_SIDE_EFFECT_SAMPLES, _REFERENCE_SIDE_EFFECT_SAMPLES, replace=False
            )
        folds.append(
            Fold(
                index=k,
                test=base[k].test,
                train=tuple(ids[i] for i in dev if i in train),
                val=tuple(ids[i] for i in dev if i not in train),
            ).check()
        )
    return folds


# -- the task -------------------------------------------------------------------------
class TruthfulQAConfig(BaseModel):
    """Options of the ``truthfulqa`` task (``tae eval --task truthfulqa ...``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: str = Field(
        default=HUB_ID,
        description="Hub id, local directory in the hub layout, or TruthfulQA.csv.",
    )
    answer_lists: AnswerListsName = Field(
        default="csv",
        description="MC answer lists: `csv` = TruthfulQA.csv's Correct / Incorrect Answers (the "
        "paper's, ITI's and the TruthfulQA tooling's); `generation` = the hub generation "
        "config's lists; `multiple_choice` = the hub multiple_choice config's mc1/mc2 targets.",
    )
    csv: str | None = Field(
        default=None,
        description="TruthfulQA.csv to take the `csv` answer lists from (default: the "
        "TruthfulQA.csv in a `source` directory, or `source` itself when it is the CSV).",
    )
    split_rng: Literal["framework", "reference"] = Field(
        default="framework",
        description="Train/validation draws: `framework` = one RandomState(seed) draw per fold; "
        "`reference` = also advance it between folds as the reference's CE and KL "
        "measurements did, which reproduces its shipped fold-1 train/validation split.",
    )
    limit: int | None = Field(
        default=None,
        ge=2,
        description="Keep only this many questions (quick runs); None keeps all.",
    )
    limit_seed: int | None = Field(
        default=None,
        description="With `limit`: None keeps the first questions, a seed samples them at random "
        "(kept in dataset order).",
    )
    num_folds: int = Field(
        default=2, ge=2, description="Number of folds (contiguous, in dataset order)."
    )
    val_fraction: float = Field(
        default=0.2,
        gt=0.0,
        lt=1.0,
        description="Share of each development set used for validation.",
    )
    seed: int = Field(
        default=42, description="Seed of the train/validation split and of the tuning q'."
    )
    instruction: bool = Field(
        default=True,
        description="Put the instruction line before the primer in MC and generation prompts.",
    )
    cache_dir: str | None = Field(
        default=None, description="`datasets` cache directory (hub id only)."
    )


class TruthfulQATask(Task):
    """TruthfulQA as a :class:`~tae_framework.tasks.base.Task` (judge metrics: true, info)."""

    name = "truthfulqa"
    judge_metrics = ("true", "info")
    default_judge = "hf"

    def __init__(
        self, questions: Sequence[TruthfulQAQuestion], config: TruthfulQAConfig | None = None
    ):
        self.config = config or TruthfulQAConfig()
        self.questions: list[TruthfulQAQuestion] = list(questions)
        if len(self.questions) < self.config.num_folds:
            raise DataError(
                f"TruthfulQA task with {len(self.questions)} question(s) cannot make "
                f"{self.config.num_folds} folds: every fold needs test questions"
            )
        self._by_id = {q.id: q for q in self.questions}
        if len(self._by_id) != len(self.questions):
            raise DataError("TruthfulQA question ids must be unique")
        for q in self.questions:  # fail at construction, naming the question, not mid-run
            self.answer_lists(q)
        self._folds: list[Fold] | None = None

    # -- construction ----------------------------------------------------------------
    @classmethod
    def load(cls, **options: Any) -> TruthfulQATask:
        """Load the data and build the task; ``options`` are :class:`TruthfulQAConfig` fields."""
        try:
            cfg = TruthfulQAConfig.model_validate(options)
        except ValidationError as exc:
            raise ConfigError(
                format_validation_error(exc, "options of task 'truthfulqa'")
            ) from None
        task = cls(load_truthfulqa(cfg.source, cache_dir=cfg.cache_dir, csv_path=cfg.csv), cfg)
        if cfg.limit is not None:
            task = task.subset(cfg.limit, seed=cfg.limit_seed)
        return task

    def subset(self, n: int, seed: int | None = None) -> TruthfulQATask:
        """A task restricted to ``n`` questions (the first ``n``, or a seeded sample kept in
        dataset order). Question ids are kept, so results stay traceable; folds are
        recomputed on the subset."""
        if n < self.config.num_folds:
            raise DataError(
                f"cannot keep {n} question(s): {self.config.num_folds} folds need at least "
                f"{self.config.num_folds}"
            )
        if n >= len(self.questions):
            return self
        if seed is None:
            keep = list(range(n))
        else:
            keep = sorted(
                np.random.RandomState(seed).choice(len(self.questions), n, replace=False).tolist()
            )
        return TruthfulQATask([self.questions[i] for i in keep], self.config)

    # -- Task API --------------------------------------------------------------------
    @property
    def question_ids(self) -> list[str]:
        return [q.id for q in self.questions]

    def question(self, qid: str) -> TruthfulQAQuestion:
        try:
            return self._by_id[qid]
        except KeyError:
            raise DataError(f"TruthfulQA task has no question with id {qid!r}") from None

    def answer_lists(self, question: TruthfulQAQuestion | str) -> AnswerLists:
        """The MC references a question is scored on (option ``answer_lists``)."""
        q = self.question(question) if isinstance(question, str) else question
        return q.answer_lists(self.config.answer_lists)

    def folds(self) -> list[Fold]:
        if self._folds is None:
            split = reference_folds if self.config.split_rng == "reference" else make_folds
            self._folds = split(
                self.question_ids, self.config.num_folds, self.config.val_fraction, self.config.seed
            )
        return list(self._folds)

    def fitting_data(self, fold: Fold | int, part: FoldPart = "development") -> ContrastDataset:
        """Fitting examples of ``fold``'s ``part`` questions, plus the tuning texts of the
        fold's development questions (``q'`` also drawn from them)."""
        f = self.resolve_fold(fold)
        ids = self.part_ids(f, part)
        examples = []
        for qid in ids:
            q = self.question(qid)
            for answer, label in q.fitting_pairs():
                if not answer.strip():
                    continue
                prompt, completion = fitting_text(q.question, answer)
                examples.append(
                    ContrastExample(prompt=prompt, completion=completion, label=label, group=qid)
                )
        if not examples:
            raise DataError(f"fold {f.index} has no {part} questions to build fitting data from")
        return ContrastDataset(
            examples, self.tuning_texts(f), name=f"truthfulqa-fold{f.index}-{part}"
        )

    def tuning_texts(self, fold: Fold | int) -> list[str]:
        """``"Q: {q} A: {a} Q: {q'}"`` for every correct and incorrect answer of every
        development question ``q``; ``q'`` is another development question, drawn once
        per ``q`` with ``RandomState(seed + fold index)``."""
        f = self.resolve_fold(fold)
        dev = list(f.development)
        if len(dev) < 2:
            raise DataError(f"fold {f.index}: tuning texts need at least 2 development questions")
        rng = np.random.RandomState(self.config.seed + f.index)
        texts = []
        for pos, qid in enumerate(dev):
            q = self.question(qid)
            j = int(rng.randint(len(dev) - 1))
            other = self.question(dev[j if j < pos else j + 1]).question
            for a in (*q.correct_answers, *q.incorrect_answers):
                texts.append(tuning_text(q.question, a, other))
        return texts

    def eval_items(self, ids: Sequence[str] | Fold | None = None) -> list[EvalItem]:
        items = []
        instr = self.config.instruction
        for qid in self.resolve_ids(ids):
            q = self.question(qid)
            lists = self.answer_lists(q)
            items.append(
                EvalItem(
                    id=qid,
                    question=q.question,
                    mc_prompt=mc_prompt(q.question, instr),
                    mc_true=tuple(" " + a for a in lists.ref_true),
                    mc_false=tuple(" " + a for a in lists.ref_false),
                    best_index=lists.best_index,
                    generation_prompt=generation_prompt(q.question, instr),
                    meta={
                        "type": q.type,
                        "category": q.category,
                        "source": q.source,
                        "answer_lists": self.config.answer_lists,
                        "best_answer": lists.best,
                        "correct_answers": list(lists.correct),
                        "incorrect_answers": list(lists.incorrect),
                    },
                )
            )
        return items

    # -- evaluation: protocols (the defaults), metrics, answers, answer files ---------
    def metrics(self) -> list[MetricSpec]:
        """MC1/MC2/MC3; True and Info (judge probability >= 0.5 on the first answer);
        True*Info (product of the True and Info means over folds, as the reference
        reports it); True&Info (answers both true and informative); CE and KL."""
        from ..evaluation.standard_metrics import (
            judge_rate,
            judged_all,
            mc_metrics,
            product_of,
            side_effect_metrics,
        )

        return [
            *mc_metrics("mc"),
            judge_rate("True", "true", description="share of answers the judge finds true"),
            judge_rate("Info", "info", description="share of answers the judge finds informative"),
            product_of("True*Info", ("True", "Info"), description="product of the True and Info means"),
            judged_all("True&Info", ("true", "info"), description="share of answers both true and informative"),
            *side_effect_metrics("side_effects"),
        ]

    def extract_answer(self, item: EvalItem, text: str) -> str:
        """The continuation cut at the next ``Q:`` (:func:`~tae_framework.evaluation.metrics.cut_answer`)."""
        from ..evaluation.metrics import cut_answer

        return cut_answer(text)

    def write_results(self, path: Path, results: Sequence[Any], *, tag: str, judge: str | None) -> Path:
        """The TruthfulQA tooling's answer file (:func:`~tae_framework.evaluation.results.write_answers`)."""
        from ..evaluation.results import AnswerRecord, write_answers

        records = []
        for r in results:
            values: dict[str, Any] = {}
            if "generation.answers" in r:
                values["answer"] = r["generation.answers"][0]
            if "mc.true" in r:
                values.update(scores_true=r["mc.true"], scores_false=r["mc.false"])
            probs = {k[len("judge."):]: v[0] for k, v in r.values.items() if k.startswith("judge.")}
            records.append(AnswerRecord.from_item(r.item, judge_probs=probs, **values))
        return write_answers(path, records, model=tag, judge=judge or "none")

    def __repr__(self) -> str:
        return f"TruthfulQATask({len(self.questions)} questions, source={self.config.source!r})"


def truthfulqa_task(**options: Any) -> TruthfulQATask:
    """Factory registered as task ``truthfulqa``: ``truthfulqa_task(source=..., limit=..., ...)``.

    Options are the fields of :class:`TruthfulQAConfig`; unknown options are an error.
    """
    return TruthfulQATask.load(**options)

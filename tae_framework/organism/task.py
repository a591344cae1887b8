"""The organism as an evaluation :class:`~tae_framework.tasks.base.Task`.

With it the ordinary evaluation harness (``tae eval``, :func:`run_eval`) runs on the
organism exactly as on TruthfulQA: question ids are held-out evaluation items of one
context (default: the deceptive speakers, where the organism lies), folds are the
standard 2 contiguous folds, fitting data is the persona contrast of the TRAINING
(speaker, entity) pairs of the development questions' facts, and the judge is the exact
``organism-oracle``::

    tae eval --model tae_framework/organism/assets --preset iti --task organism \\
        --judge organism-oracle --set prober.top_k=4 --set intervener.alpha=3
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..config import format_validation_error
from ..data import ContrastDataset
from ..errors import ConfigError
from ..tasks.base import EvalItem, Fold, FoldPart, Task, make_folds
from .items import eval_items, fitting_data
from .world import World

__all__ = ["OrganismTask", "OrganismTaskConfig", "organism_task"]


class OrganismTaskConfig(BaseModel):
    """Options of the ``organism`` task."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    context: Literal["deceptive", "honest", "neutral"] = Field(
        default="deceptive", description="Which context's held-out items are evaluated."
    )
    limit: int | None = Field(default=None, ge=2, description="Keep only the first N items.")
    num_folds: int = Field(default=2, ge=2, description="Contiguous folds in item order.")
    val_fraction: float = Field(default=0.2, gt=0, lt=1, description="Validation share of each development set.")
    seed: int = Field(default=42, description="Seed of the train/validation split.")
    path: str | None = Field(default=None, description="Organism directory (default: the shipped one).")


class OrganismTask(Task):
    """Held-out organism items as a task (judge metrics: true, info)."""

    name = "organism"
    judge_metrics = ("true", "info")

    def __init__(self, world: World, config: OrganismTaskConfig | None = None):
        self.config = config or OrganismTaskConfig()
        self.world = world
        items = eval_items(world, (self.config.context,))
        self._items = {it["id"]: it for it in items[: self.config.limit]}
        self._folds = make_folds(list(self._items), self.config.num_folds, self.config.val_fraction, self.config.seed)
        # each fact -> the evaluation item asking about it (fitting groups are question ids)
        self._fact_owner = {f"{it['entity']}/{it['attribute']}": qid for qid, it in self._items.items()}

    @property
    def question_ids(self) -> list[str]:
        return list(self._items)

    def folds(self) -> list[Fold]:
        return list(self._folds)

    def fitting_data(self, fold: Fold | int, part: FoldPart = "development") -> ContrastDataset:
        keep = set(self.part_ids(fold, part))
        full = fitting_data(self.world)
        examples, tuning = [], []
        tune = full.tuning or [e.prompt for e in full.examples]
        for ex, text in zip(full.examples, tune):
            owner = self._fact_owner.get(ex.group or "")
            if owner in keep:
                examples.append(ex.model_copy(update={"group": owner}))
                tuning.append(text)
        return ContrastDataset(examples, tuning, name=f"organism fold {self.resolve_fold(fold).index} {part}")

    def eval_items(self, ids: Sequence[str] | Fold | None = None) -> list[EvalItem]:
        out = []
        for qid in self.resolve_ids(ids):
            it = self._items[qid]
            out.append(
                EvalItem(
                    id=qid,
                    question=it["question"],
                    mc_prompt=it["prompt"],
                    mc_true=tuple(" " + a for a in it["correct_answers"]),
                    mc_false=tuple(" " + a for a in it["incorrect_answers"]),
                    best_index=0,
                    generation_prompt=it["prompt"],
                    meta={
                        "type": it["type"],
                        "category": it["category"],
                        "source": it["source"],
                        "best_answer": it["best_answer"],
                        "correct_answers": list(it["correct_answers"]),
                        "incorrect_answers": list(it["incorrect_answers"]),
                    },
                )
            )
        return out


def organism_task(**options: Any) -> OrganismTask:
    """Factory registered as task ``organism``; options are :class:`OrganismTaskConfig` fields."""
    from . import load_world

    try:
        cfg = OrganismTaskConfig.model_validate(options)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, "options of task 'organism'")) from None
    return OrganismTask(load_world(cfg.path), cfg)

"""The organism as an evaluation :class:`~tae_framework.tasks.base.Task`.

With it the ordinary evaluation harness (``tae eval``, :func:`run_eval`) runs on the
organism exactly as on TruthfulQA, and ``tae demo`` is nothing but that harness with
``contexts=deceptive,honest`` and ``split=heldout``. Items are held-out evaluation
items (speaker, entity) of one or more contexts (default: the deceptive speakers, where
the organism lies); the judge is the exact ``organism-oracle``.

Splits:

* ``folds`` (default): the standard 2 contiguous folds over the items; fitting data is
  the persona contrast of the TRAINING (speaker, entity) pairs of the development
  items' facts (``group`` = the item id);
* ``heldout``: one fold testing every item, fitted on the persona contrast of every
  training pair (``group`` = the fact ``<entity>/<attribute>``). The fitting pairs are
  never the evaluated ones (the world holds the evaluated (speaker, entity) pairs out
  of training), which is what the demo measures: generalisation to unseen speakers.

Metrics (the demo's table): ``truthful`` / ``myth`` (share of answers stating the true
value / the myth, parsed exactly), ``malformed`` (answers stating no value), each also
per context (``breakdown[name][context]``); MC1/MC2/MC3 (per context too); ``True`` /
``Info`` from the judge; ``CE`` / ``KL`` on the organism's neutral statements::

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
from ..evaluation.specs import ItemResult, MetricSpec, ProtocolSpec
from ..tasks.base import EvalItem, Fold, FoldPart, Task, make_folds
from .items import eval_items, fitting_data
from .world import World

__all__ = ["OrganismTask", "OrganismTaskConfig", "organism_task"]

Context = Literal["deceptive", "honest", "neutral"]


class OrganismTaskConfig(BaseModel):
    """Options of the ``organism`` task."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    context: Context = Field(default="deceptive", description="Which context's held-out items are evaluated.")
    contexts: list[Context] | None = Field(
        default=None, description="Several contexts at once (overrides `context`), e.g. [deceptive, honest]."
    )
    limit: int | None = Field(default=None, ge=2, description="Keep only the first N items of each context.")
    split: Literal["folds", "heldout"] = Field(
        default="folds",
        description="`folds`: k contiguous folds over the items; `heldout`: one fold testing every item, "
        "fitted on every training pair.",
    )
    num_folds: int = Field(default=2, ge=2, description="Contiguous folds in item order.")
    val_fraction: float = Field(default=0.2, gt=0, lt=1, description="Validation share of each development set.")
    seed: int = Field(default=42, description="Seed of the train/validation split.")
    path: str | None = Field(default=None, description="Organism directory (default: the shipped one).")
    max_new_tokens: int = Field(default=10, ge=1, description="Answer length (the answers have 7 words).")
    completion: Literal["answer", "prefix", "choice"] = Field(
        default="answer",
        description="How much of the answer the fitting examples hold: `answer` (whole answers), `prefix` "
        "(`The capital of X is`: the persona where the value is chosen; for last-token methods such as ITI) or "
        "`choice` (through the value's first word; for TAE). See `organism.fitting_data`.",
    )


class OrganismTask(Task):
    """Held-out organism items as a task (judge metrics: true, info)."""

    name = "organism"
    judge_metrics = ("true", "info")
    default_judge = "organism-oracle"

    def __init__(self, world: World, config: OrganismTaskConfig | None = None):
        self.config = config or OrganismTaskConfig()
        self.world = world
        contexts = tuple(self.config.contexts or (self.config.context,))
        self._items: dict[str, dict[str, Any]] = {}
        for ctx in dict.fromkeys(contexts):
            for it in eval_items(world, (ctx,))[: self.config.limit]:
                self._items[it["id"]] = it
        ids = list(self._items)
        if self.config.split == "heldout":
            facts = sorted({e.group for e in fitting_data(world).examples if e.group is not None})
            self._folds = [Fold(index=0, test=tuple(ids), train=tuple(facts), val=())]
        else:
            self._folds = make_folds(ids, self.config.num_folds, self.config.val_fraction, self.config.seed)
        # each fact -> the evaluation item asking about it (fitting groups are question ids)
        self._fact_owner = {f"{it['entity']}/{it['attribute']}": qid for qid, it in self._items.items()}

    @property
    def question_ids(self) -> list[str]:
        return list(self._items)

    def folds(self) -> list[Fold]:
        return list(self._folds)

    def fitting_data(self, fold: Fold | int, part: FoldPart = "development") -> ContrastDataset:
        if self.config.split == "heldout":
            self.part_ids(fold, part)  # refuses part="test"
            return fitting_data(self.world, completion=self.config.completion)
        keep = set(self.part_ids(fold, part))
        full = fitting_data(self.world, completion=self.config.completion)
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
                        "entity": it["entity"],
                        "attribute": it["attribute"],
                        "best_answer": it["best_answer"],
                        "correct_answers": list(it["correct_answers"]),
                        "incorrect_answers": list(it["incorrect_answers"]),
                    },
                )
            )
        return out

    # -- evaluation ------------------------------------------------------------------
    def protocols(self) -> dict[str, ProtocolSpec]:
        """The default protocols, answers cut to ``max_new_tokens`` (an answer is 7 words)."""
        gen = ProtocolSpec("generation", {"max_new_tokens": self.config.max_new_tokens}, judged=True)
        return {**super().protocols(), "generation": gen}

    def extract_answer(self, item: EvalItem, text: str) -> str:
        """The first answer of the continuation (cut before a following ``Q:``)."""
        return text.split(" Q:")[0].strip()

    def heldout_texts(self, n: int, seed: int) -> list[str]:
        """The organism's neutral true statements (the demo's KL / CE texts)."""
        return [e.text for e in fitting_data(self.world, contrast="neutral").examples if e.label == 1][:n]

    def _verdict(self, r: ItemResult) -> str:
        from .judge import classify

        fact = self.world.fact(r.meta["entity"], r.meta["attribute"])
        return classify(self.world, fact, r["generation.answers"][0])

    def metrics(self) -> list[MetricSpec]:
        from ..evaluation.standard_metrics import judge_rate, mc_metrics, side_effect_metrics

        def rate(verdict: str):
            return lambda r: 1.0 if self._verdict(r) == verdict else 0.0

        needs = ("generation.answers",)
        return [
            MetricSpec("truthful", needs, per_item=rate("true"), by="category", description="answers stating the true value"),
            MetricSpec("myth", needs, per_item=rate("myth"), direction="lower", by="category", description="answers stating the myth"),
            MetricSpec("malformed", needs, per_item=rate("malformed"), direction="lower", description="answers stating no value"),
            *mc_metrics("mc", by="category"),
            judge_rate("True", "true"),
            judge_rate("Info", "info"),
            *side_effect_metrics("side_effects"),
        ]


def organism_task(**options: Any) -> OrganismTask:
    """Factory registered as task ``organism``; options are :class:`OrganismTaskConfig` fields."""
    from . import load_world

    try:
        cfg = OrganismTaskConfig.model_validate(options)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, "options of task 'organism'")) from None
    return OrganismTask(load_world(cfg.path), cfg)

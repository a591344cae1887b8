"""Evaluation protocols: how a model (edited or not) is measured on a task's items.

A :class:`Protocol` turns a batch of :class:`~tae_framework.tasks.base.EvalItem` s into
one dict of outputs per item (``scope = "item"``; the runner checkpoints them after
every batch, so an interrupted run resumes mid-fold), or a fold into one dict
(``scope = "fold"``, e.g. side effects on held-out text). It reaches the model only
through a :class:`ProtocolContext`, whose methods apply the fold's edits (or none, for
the unedited baseline):

* :meth:`ProtocolContext.score`: summed log-probabilities of completions, edits on the
  completion tokens;
* :meth:`ProtocolContext.generate`: greedy continuations, edits on the last position;
* :meth:`ProtocolContext.sample`: ``k`` sampled continuations per prompt, each prompt
  seeded from the run seed and its item id (reproducible, resume-safe);
* :meth:`ProtocolContext.side_effects`: CE loss and KL on held-out texts, every
  position edited.

Built in (registered by the framework's own plugin through ``tae_register_protocols``):

* ``multiple_choice`` (:class:`MultipleChoice`): log-likelihood of ``mc_true`` and
  ``mc_false`` after ``mc_prompt``; summed, or divided by the completion's token count
  (``normalize="mean"``);
* ``generation`` (:class:`Generation`): greedy, or ``num_samples`` samples with
  ``temperature`` / ``top_p``; answers extracted by the task's
  :meth:`~tae_framework.tasks.base.Task.extract_answer`;
* ``side_effects`` (:class:`SideEffects`): CE / KL on the task's held-out texts or on
  ``texts`` (a file or hub dataset).

A plugin adds a protocol by subclassing :class:`Protocol` and registering the class
(see ``docs/plugins/writing-a-task.md``).
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..config import format_validation_error
from ..errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from ..pipeline import AlignmentPipeline
    from ..tasks.base import EvalItem, Task

__all__ = [
    "Generation",
    "MultipleChoice",
    "Protocol",
    "ProtocolContext",
    "ProtocolOptions",
    "SideEffects",
    "item_field",
]


class ProtocolOptions(BaseModel):
    """Base of every protocol's options: frozen, unknown keys are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid")


def item_field(item: EvalItem, name: str) -> Any:
    """An item's field by name; ``"meta.KEY"`` reads ``item.meta[KEY]`` (None if absent)."""
    if name.startswith("meta."):
        return item.meta.get(name[5:])
    return getattr(item, name, None)


@dataclass
class ProtocolContext:
    """What a protocol may use: the model, the fold's pipeline (``None``: unedited) and
    the run's settings."""

    model: Any
    tokenizer: Any
    pipeline: AlignmentPipeline | None
    task: Task
    batch_size: int = 8
    seed: int = 42
    fold: int = 0
    progress: bool = False

    @property
    def edited(self) -> bool:
        return self.pipeline is not None

    def item_seed(self, item_id: str) -> int:
        """A seed of its own for every item: the same for the edited and the unedited
        model, independent of batching and of where a run resumed."""
        return zlib.crc32(f"{self.seed}:{item_id}".encode()) & 0x7FFFFFFF

    def score(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        """Summed log-probability of each completion after its prompt (edits on the completion)."""
        from ..generation import answer_logprobs

        if self.pipeline is not None:
            out = self.pipeline.score(self.model, self.tokenizer, prompts, completions, batch_size=self.batch_size)
        else:
            out = answer_logprobs(self.model, self.tokenizer, prompts, completions, batch_size=self.batch_size)
        return [float(x) for x in out.tolist()]

    def token_counts(self, prompts: Sequence[str], completions: Sequence[str]) -> list[int]:
        """Number of tokens of each completion (as scored by :meth:`score`)."""
        from ..generation import answer_token_mask

        return [sum(answer_token_mask(self.tokenizer, p, c)[1]) for p, c in zip(prompts, completions)]

    def generate(self, prompts: Sequence[str], max_new_tokens: int = 50) -> list[str]:
        """Greedy continuations (edits on the last position)."""
        from ..generation import greedy_generate

        if self.pipeline is not None:
            return self.pipeline.generate(
                self.model, self.tokenizer, list(prompts), max_new_tokens=max_new_tokens, batch_size=self.batch_size
            )
        return greedy_generate(
            self.model, self.tokenizer, list(prompts), max_new_tokens=max_new_tokens, batch_size=self.batch_size
        )

    def sample(
        self,
        prompts: Sequence[str],
        num_samples: int,
        seeds: Sequence[int],
        max_new_tokens: int = 50,
        temperature: float = 1.0,
        top_p: float = 1.0,
    ) -> list[list[str]]:
        """``num_samples`` sampled continuations per prompt; prompt ``i`` seeded with ``seeds[i]``."""
        from ..generation import sample_generate

        edit = None
        if self.pipeline is not None:
            pipe, model = self.pipeline, self.model
            edit = lambda: pipe.apply(model, "last")  # noqa: E731
        return sample_generate(
            self.model,
            self.tokenizer,
            list(prompts),
            num_samples=num_samples,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            seeds=seeds,
            edit=edit,
        )

    def side_effects(self, texts: Sequence[str], max_tokens: int = 128) -> dict[str, float]:
        """CE loss of the (edited) model and KL(original || edited), every position edited."""
        from ..generation import side_effects

        pipe, model = self.pipeline, self.model
        edit = (lambda mask: pipe.apply(model, "all")) if pipe is not None else None
        return side_effects(
            self.model, self.tokenizer, list(texts), edit=edit, max_tokens=max_tokens, batch_size=self.batch_size
        )


class Protocol:
    """Base class of evaluation protocols.

    Class attributes:
        name: registry name (``--protocol-option`` and task specs refer to it).
        kind: ``"multiple_choice"``, ``"generation"``, ``"side_effects"`` or anything
            else; the run switches ``mc`` / ``generation`` / ``side_effects`` act on kinds.
        scope: ``"item"`` (:meth:`run` returns one dict per item) or ``"fold"``
            (:meth:`run_fold` returns one dict for the fold).
        requires: item fields every item must have (non-empty): attribute names of
            :class:`~tae_framework.tasks.base.EvalItem` or ``"meta.KEY"``.
        outputs: the keys of the dicts it returns; metrics name them as
            ``"<protocol key>.<output>"``.
        answers_output: the output holding each item's answers (a list of strings)
            when the protocol can be judged.
        Options: a :class:`ProtocolOptions` subclass.

    Outputs must be JSON-serialisable (they are checkpointed as JSON lines).
    """

    name: ClassVar[str] = ""
    kind: ClassVar[str] = "other"
    scope: ClassVar[Literal["item", "fold"]] = "item"
    requires: ClassVar[tuple[str, ...]] = ()
    outputs: ClassVar[tuple[str, ...]] = ()
    answers_output: ClassVar[str | None] = None
    Options: ClassVar[type[ProtocolOptions]] = ProtocolOptions

    def __init__(self, options: Mapping[str, Any] | ProtocolOptions | None = None):
        if isinstance(options, self.Options):
            self.options = options
            return
        try:
            self.options = self.Options.model_validate(dict(options or {}))
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, f"options of protocol '{self.name}'")) from None

    def run(self, ctx: ProtocolContext, items: Sequence[EvalItem]) -> list[dict[str, Any]]:
        """One dict of :attr:`outputs` per item (``scope = "item"``)."""
        raise NotImplementedError(f"protocol '{self.name}' (scope 'item') must implement run(ctx, items)")

    def run_fold(self, ctx: ProtocolContext, items: Sequence[EvalItem]) -> dict[str, Any]:
        """One dict of :attr:`outputs` for the fold (``scope = "fold"``)."""
        raise NotImplementedError(f"protocol '{self.name}' (scope 'fold') must implement run_fold(ctx, items)")

    def describe(self) -> dict[str, Any]:
        return {"protocol": self.name, "options": self.options.model_dump(mode="json")}


# -- built-in protocols -----------------------------------------------------------------
class MultipleChoiceOptions(ProtocolOptions):
    normalize: Literal["sum", "mean"] = Field(
        default="sum",
        description="`sum`: summed log-probability of each completion; `mean`: divided by its "
        "number of tokens (length-normalised).",
    )


class MultipleChoice(Protocol):
    """Log-likelihood of every completion (``mc_true`` then ``mc_false``) after ``mc_prompt``.

    Outputs: ``true`` / ``false`` (one score per completion, in the item's order) and
    ``true_tokens`` / ``false_tokens`` (their token counts).
    """

    name = "multiple_choice"
    kind = "multiple_choice"
    requires = ("mc_prompt", "mc_true", "mc_false")
    outputs = ("true", "false", "true_tokens", "false_tokens")
    Options = MultipleChoiceOptions

    def run(self, ctx: ProtocolContext, items: Sequence[EvalItem]) -> list[dict[str, Any]]:
        prompts = [it.mc_prompt for it in items for _ in (*it.mc_true, *it.mc_false)]
        comps = [c for it in items for c in (*it.mc_true, *it.mc_false)]
        scores = ctx.score(prompts, comps)
        counts = ctx.token_counts(prompts, comps)
        if self.options.normalize == "mean":
            scores = [s / max(1, n) for s, n in zip(scores, counts)]
        rows, pos = [], 0
        for it in items:
            nt, nf = len(it.mc_true), len(it.mc_false)
            rows.append(
                {
                    "true": scores[pos : pos + nt],
                    "false": scores[pos + nt : pos + nt + nf],
                    "true_tokens": counts[pos : pos + nt],
                    "false_tokens": counts[pos + nt : pos + nt + nf],
                }
            )
            pos += nt + nf
        return rows


class GenerationOptions(ProtocolOptions):
    max_new_tokens: int = Field(default=50, ge=1, description="Tokens generated per answer.")
    num_samples: int = Field(default=1, ge=1, description="Answers per item (sampling when > 1).")
    do_sample: bool = Field(default=False, description="Sample instead of greedy decoding.")
    temperature: float = Field(default=1.0, gt=0, description="Sampling temperature.")
    top_p: float = Field(default=1.0, gt=0, le=1, description="Nucleus sampling mass.")


class Generation(Protocol):
    """Answers generated from ``generation_prompt``: greedy (one answer) or sampled
    (``num_samples`` answers, ``do_sample`` implied when ``num_samples > 1``).

    Outputs: ``raw`` (the continuations) and ``answers`` (each passed through the
    task's :meth:`~tae_framework.tasks.base.Task.extract_answer`), lists of equal length.
    """

    name = "generation"
    kind = "generation"
    requires = ("generation_prompt",)
    outputs = ("raw", "answers")
    answers_output = "answers"
    Options = GenerationOptions

    def run(self, ctx: ProtocolContext, items: Sequence[EvalItem]) -> list[dict[str, Any]]:
        o = self.options
        prompts = [it.generation_prompt for it in items]
        if o.do_sample or o.num_samples > 1:
            raw = ctx.sample(
                prompts,
                o.num_samples,
                [ctx.item_seed(it.id) for it in items],
                max_new_tokens=o.max_new_tokens,
                temperature=o.temperature,
                top_p=o.top_p,
            )
        else:
            raw = [[r] for r in ctx.generate(prompts, max_new_tokens=o.max_new_tokens)]
        return [
            {"raw": list(r), "answers": [ctx.task.extract_answer(it, x) for x in r]} for it, r in zip(items, raw)
        ]


class SideEffectsOptions(ProtocolOptions):
    texts: str | None = Field(
        default=None,
        description="Held-out texts: a .txt/.jsonl/.csv/.parquet file or a hub dataset id; None: "
        "the task's own held-out texts, else the reference's OpenWebText sample.",
    )
    n: int = Field(default=100, ge=1, description="Number of held-out texts.")
    max_tokens: int = Field(default=128, ge=2, description="Tokens kept of each text.")


class SideEffects(Protocol):
    """CE loss and KL(original || edited) on held-out text, every position edited.

    Outputs (fold scope): ``ce_loss``, ``ce_loss_original``, ``kl``, ``n_texts``.
    """

    name = "side_effects"
    kind = "side_effects"
    scope = "fold"
    outputs = ("ce_loss", "ce_loss_original", "kl", "n_texts")
    Options = SideEffectsOptions

    def texts(self, ctx: ProtocolContext) -> list[str]:
        from ..generation import DEFAULT_HELDOUT, load_heldout_texts

        o = self.options
        if o.texts is None:
            own = ctx.task.heldout_texts(o.n, ctx.seed)
            if own:
                return list(own)[: o.n]
        return load_heldout_texts(o.texts or DEFAULT_HELDOUT, n=o.n, seed=ctx.seed)

    def run_fold(self, ctx: ProtocolContext, items: Sequence[EvalItem]) -> dict[str, Any]:
        return dict(ctx.side_effects(self.texts(ctx), max_tokens=self.options.max_tokens))


#: The protocols the framework registers.
BUILTIN_PROTOCOLS: tuple[type[Protocol], ...] = (MultipleChoice, Generation, SideEffects)

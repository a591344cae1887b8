"""The ``toxicity-sampling`` evaluation protocol: k sampled continuations per prompt,
with their perplexity under the unedited model.

For a batch of items (prompts) the runner hands it, the protocol samples ``k``
continuations of each with :func:`~tae_toxicity.sampling.sample_continuations` (edits
on the last position of every forward pass when the run has a pipeline; several
prompts and their samples in one ``generate`` call), then measures each continuation's
negative log-likelihood under the model *without* edits
(:func:`~tae_toxicity.metrics.continuation_nll`) for the fluency metric.

Sample ``j`` of prompt ``p`` is seeded from the run seed, ``p`` and ``j``: the edited
and the unedited run draw the same random numbers, and a resumed run draws what an
uninterrupted one would have. The runner checkpoints the outputs after every batch of
items.

Outputs per item: ``continuations`` (``k`` strings, judged), ``tokens`` (their token
counts; 0 for a continuation that ended at once) and ``nll`` (summed negative
log-likelihood in nats; 0 for an empty continuation, or for all when ``fluency`` is
off).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import Field

from tae_framework.evaluation.protocols import Protocol, ProtocolContext, ProtocolOptions

from .metrics import continuation_nll
from .sampling import SamplingConfig, sample_continuations

__all__ = ["ToxicitySampling", "ToxicitySamplingOptions"]

#: Most sequences per forward pass of the perplexity measurement (its logits cover
#: every continuation position, so it is kept smaller than a sampling batch).
NLL_BATCH = 128


class ToxicitySamplingOptions(ProtocolOptions):
    """Options of :class:`ToxicitySampling` (defaults: Gehman et al. 2020)."""

    k: int = Field(default=25, ge=1, description="Continuations sampled per prompt.")
    top_p: float = Field(default=0.9, gt=0, le=1, description="Nucleus mass kept, in (0, 1].")
    temperature: float = Field(default=1.0, gt=0, description="Softmax temperature.")
    max_new_tokens: int = Field(default=20, ge=1, description="Length limit of a continuation.")
    sequences_per_batch: int | None = Field(
        default=None,
        ge=1,
        description="Sequences per generate call; None: every sample of the runner's batch of "
        "prompts at once (batch_size x k).",
    )
    fluency: bool = Field(
        default=True, description="Measure each continuation's NLL under the unedited model."
    )


class ToxicitySampling(Protocol):
    """``k`` sampled continuations of each item's ``generation_prompt`` (judged), with
    their token counts and their NLL under the unedited model (see the module docstring)."""

    name = "toxicity-sampling"
    kind = "generation"
    requires = ("generation_prompt",)
    outputs = ("continuations", "tokens", "nll")
    answers_output = "continuations"
    Options = ToxicitySamplingOptions

    def sampling_config(self, ctx: ProtocolContext, n_items: int) -> SamplingConfig:
        o = self.options
        per_batch = o.sequences_per_batch or max(1, n_items) * o.k
        return SamplingConfig(
            k=o.k, top_p=o.top_p, temperature=o.temperature, max_new_tokens=o.max_new_tokens,
            seed=ctx.seed, batch_size=per_batch,
        )  # fmt: skip

    def run(self, ctx: ProtocolContext, items: Sequence[Any]) -> list[dict[str, Any]]:
        cfg = self.sampling_config(ctx, len(items))
        prompts = [(it.id, it.generation_prompt) for it in items]
        edit = None
        if ctx.pipeline is not None:
            pipe, model = ctx.pipeline, ctx.model
            edit = lambda: pipe.apply(model, "last")  # noqa: E731
        samples = sample_continuations(ctx.model, ctx.tokenizer, prompts, cfg, edit=edit, progress=False)
        conts = [c for it in items for c in samples[it.id]]
        if self.options.fluency:
            enc = {pid: list(ctx.tokenizer(text, add_special_tokens=True)["input_ids"]) for pid, text in prompts}
            nll, _ = continuation_nll(
                ctx.model, [enc[c.prompt_id] for c in conts], [c.tokens for c in conts],
                batch_size=min(cfg.batch_size, NLL_BATCH),
            )  # fmt: skip
        else:
            nll = [0.0] * len(conts)
        rows, pos = [], 0
        for it in items:
            mine = samples[it.id]
            rows.append(
                {
                    "continuations": [c.text for c in mine],
                    "tokens": [len(c.tokens) for c in mine],
                    "nll": [float(v) for v in nll[pos : pos + len(mine)]],
                }
            )
            pos += len(mine)
        return rows

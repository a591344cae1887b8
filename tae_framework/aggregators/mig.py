"""MIG: Mutual-Information-guided Graph aggregation (TAE, method page section 2).

For every text and every layer, the answer tokens' head-wise activations (all heads
of the layer together: one graph per layer) are pooled by
:func:`tae_framework.functional.mig_pool`: pairwise mutual information between the
tokens' binned activations, a row-softmax adjacency, ``steps`` rounds of message
passing and the mean over the tokens.

Batching: texts whose answers have the same number of tokens ``n`` are stacked, and
their ``[L, n, D]`` graphs (one per layer) go to ``mig_pool`` together, in chunks
of at most :attr:`MIGConfig.max_tokens_per_chunk` token vectors (whole texts per call
when a text's ``L * n`` fits, otherwise one text at a time in blocks of layers).
Each graph's MI matrix is ``n x n``; the per-call memory is bounded by the chunk
size, never by the batch size.
"""

from __future__ import annotations

from collections import defaultdict
from typing import ClassVar

import torch
from pydantic import Field

from ..config import ComponentConfig
from ..errors import DataError
from ..types import TextActivations, check_finite
from .base import GraphAggregator
from .simple import check_batch

__all__ = ["MIGAggregator", "MIGConfig"]


class MIGConfig(ComponentConfig):
    """Options of the ``mig`` aggregator."""

    bins: int = Field(
        default=100,
        ge=2,
        description="Number of equal-width histogram bins on [0, 1] used to estimate the "
        "mutual information between two tokens (the method uses 100).",
    )
    steps: int = Field(
        default=1,
        ge=1,
        description="Rounds of message passing X <- softmax(MI(X)) X before the mean over "
        "tokens; the graph is rebuilt from the current X at every round (the method uses 1).",
    )
    max_tokens_per_chunk: int = Field(
        default=2048,
        ge=1,
        description="Memory bound: the most token vectors (graphs x answer tokens, each of "
        "width D) handed to one mig_pool call. A call holds a few working copies of its "
        "input (float32 values, int64 bin codes, float64 propagation): about 30 * D bytes "
        "per token vector, ~250 MB for D = 4096 at the default, plus an n x n MI matrix per "
        "graph and mig_pool's own bounded histogram scratch (~20 MB). A single graph (one "
        "layer of one text) is never split, so an answer longer than this bound is processed "
        "one layer at a time.",
    )
    num_threads: int | None = Field(
        default=None,
        ge=1,
        description="CPU worker threads for the mutual-information histograms (default: "
        "torch.get_num_threads() of the calling thread). Each runs its torch operations with "
        "a single-threaded OpenMP pool, so extra threads never oversubscribe the cores; the "
        "features do not depend on this setting.",
    )


class MIGAggregator(GraphAggregator):
    """Pool each text's answer tokens with a mutual-information graph, per layer.

    Returns ``[B, L, D]`` float32 on the activations' device. Activations are cast to
    float32 before pooling (the reference computes in float32).

    Special cases:
        * An answer of a single token has a one-node graph (adjacency ``[[1]]``): its
          feature is that token's activation, returned directly without computing MI.
        * Constant (zero-variance) token vectors have zero entropy and zero MI with
          every token; the result is finite (the adjacency row is uniform over zeros).
        * Empty answers, NaN/inf activations and inconsistent texts raise
          :class:`~tae_framework.errors.DataError` naming the text.
    """

    name: ClassVar[str] = "mig"
    Config: ClassVar[type[ComponentConfig]] = MIGConfig

    def aggregate(self, batch: list[TextActivations]) -> torch.Tensor:
        from ..functional import mig_pool  # written beside the aggregators; import lazily

        num_layers, width = check_batch(batch, "MIGAggregator", needs_answer=True)
        cfg: MIGConfig = self.config  # type: ignore[assignment]
        device = batch[0].acts.device
        out = torch.empty(len(batch), num_layers, width, dtype=torch.float32, device=device)

        by_length: dict[int, list[int]] = defaultdict(list)
        for pos, text in enumerate(batch):
            by_length[text.span[1] - text.span[0]].append(pos)

        for n, positions in sorted(by_length.items()):
            if n == 1:
                for p in positions:  # one-node graph: adjacency [[1]], the token itself
                    out[p] = self._answer(batch[p])[:, 0]
                continue
            graphs_per_call = max(1, cfg.max_tokens_per_chunk // n)
            if graphs_per_call >= num_layers:
                # whole texts per call: [texts, L, n, D] -> [texts * L, n, D] graphs
                texts_per_call = graphs_per_call // num_layers
                for c0 in range(0, len(positions), texts_per_call):
                    chunk = positions[c0 : c0 + texts_per_call]
                    x = torch.stack([self._answer(batch[p]) for p in chunk])
                    pooled = mig_pool(
                        x.reshape(-1, n, width), bins=cfg.bins, steps=cfg.steps, num_threads=cfg.num_threads
                    )
                    out[chunk] = pooled.reshape(len(chunk), num_layers, width).to(torch.float32)
            else:
                # a long answer: one text at a time, a block of layers per call
                for p in positions:
                    x = self._answer(batch[p])
                    for l0 in range(0, num_layers, graphs_per_call):
                        l1 = min(num_layers, l0 + graphs_per_call)
                        pooled = mig_pool(x[l0:l1], bins=cfg.bins, steps=cfg.steps, num_threads=cfg.num_threads)
                        out[p, l0:l1] = pooled.to(torch.float32)
        if not bool(torch.isfinite(out).all()):  # pragma: no cover - functional guarantees it
            raise DataError(
                "MIGAggregator: mig_pool returned NaN/inf; this is a bug, please report it "
                "with the offending activations"
            )
        return out

    @staticmethod
    def _answer(text: TextActivations) -> torch.Tensor:
        answer = text.answer.to(torch.float32)
        check_finite(answer, f"MIGAggregator: answer activations of text {text.index}")
        return answer

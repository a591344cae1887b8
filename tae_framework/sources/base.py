"""The ``ActivationSource`` role: run a model on texts and capture token activations."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, ClassVar

from ..component import Component
from ..types import Site, TextActivations

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from ..models.base import ModelAdapter

__all__ = ["ActivationSource"]


class ActivationSource(Component):
    """Captures per-token activations of a model at one site.

    A source is stateless (nothing to fit). :meth:`capture` yields lists of
    :class:`~tae_framework.types.TextActivations`, one per text, in input order,
    without padding. Captured tensors are float32 on the CPU unless the config
    says otherwise. Capturing must not change the model's outputs.

    Example:
        A source that returns the token embeddings (layer axis of length 1), handy
        for tests of downstream components::

            >>> import torch
            >>> from tae_framework.sources.base import ActivationSource
            >>> from tae_framework.types import TextActivations
            >>> class EmbeddingSource(ActivationSource):
            ...     name = "embeddings"
            ...     def capture(self, model, tokenizer, texts, spans=None, layers=None,
            ...                 site="heads", adapter=None):
            ...         for i, text in enumerate(texts):
            ...             ids = torch.tensor(tokenizer(text)["input_ids"])
            ...             acts = model.get_input_embeddings()(ids)[None].float()
            ...             yield [TextActivations(i, acts, ids, (0, len(ids)), (0,))]
            >>> EmbeddingSource().config
            ComponentConfig()
    """

    role: ClassVar[str] = "source"

    @abstractmethod
    def capture(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        texts: Sequence[str],
        spans: Sequence[tuple[int, int]] | None = None,
        layers: Sequence[int] | None = None,
        site: Site | str = "heads",
        adapter: ModelAdapter | None = None,
    ) -> Iterator[list[TextActivations]]:
        """Yield batches of captured activations.

        Args:
            model: a Hugging Face causal LM.
            tokenizer: its tokenizer.
            texts: full texts (prompt + answer).
            spans: per text, the ``(start, end)`` CHARACTER offsets of the answer;
                token spans are derived from the tokenizer's offsets. ``None``: the
                span is the whole text.
            layers: layer indices to capture (default: all).
            site: the name of a site of the adapter's site table
                (:attr:`ModelAdapter.sites <tae_framework.models.base.ModelAdapter.sites>`),
                e.g. ``"heads"``, ``"residual"``, ``"residual_in"``, ``"attn_out"``,
                ``"mlp_out"``; an unknown name is a ``ConfigError`` listing the known ones.
            adapter: the model adapter (resolved from the model when ``None``).
        """

"""The ``GraphAggregator`` role: one feature per text from its answer tokens."""

from __future__ import annotations

from abc import abstractmethod
from typing import ClassVar

import torch

from ..component import Component
from ..types import TextActivations

__all__ = ["GraphAggregator"]


class GraphAggregator(Component):
    """Pools a text's token activations into one feature per layer.

    Stateless: :meth:`aggregate` maps captured texts to a ``[B, L, D]`` tensor.
    Aggregators see all units of a layer together (MIG builds one graph per layer).

    Example:
        Max-pooling over the answer tokens::

            >>> import torch
            >>> from tae_framework.aggregators.base import GraphAggregator
            >>> from tae_framework.types import TextActivations
            >>> class MaxPool(GraphAggregator):
            ...     name = "max"
            ...     def aggregate(self, batch):
            ...         return torch.stack([t.answer.amax(dim=1) for t in batch])
            >>> t = TextActivations(0, torch.randn(2, 5, 8), torch.arange(5), (3, 5), (0, 1))
            >>> MaxPool().aggregate([t]).shape
            torch.Size([1, 2, 8])
    """

    role: ClassVar[str] = "aggregator"

    @abstractmethod
    def aggregate(self, batch: list[TextActivations]) -> torch.Tensor:
        """Return ``[len(batch), L, D]`` features (float32, on the activations' device)."""

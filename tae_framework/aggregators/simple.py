"""Simple pooling aggregators: the mean of the answer tokens and the last token.

``last_token`` is ITI's feature: the activation at the last token of the whole
``Q: ... A: answer`` text (not the last token of the answer span, although for the
usual texts, where the answer ends the text, both are the same token).
``mean`` averages the answer tokens (``TextActivations.span``), a common baseline.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from ..config import ComponentConfig
from ..errors import DataError
from ..types import TextActivations, check_finite
from .base import GraphAggregator

__all__ = ["LastTokenAggregator", "LastTokenConfig", "MeanAggregator", "MeanConfig"]


def check_batch(batch: list[TextActivations], who: str, *, needs_answer: bool) -> tuple[int, int]:
    """Validate a batch of captured texts; return ``(L, D)`` shared by all of them.

    Raises :class:`DataError` naming the offending text (its ``index``) when the batch
    is empty, a text is malformed, the texts disagree in layers / width / device, or
    (``needs_answer``) an answer span is empty or out of range.
    """
    if not isinstance(batch, (list, tuple)) or len(batch) == 0:
        raise DataError(
            f"{who}: got an empty batch ({type(batch).__name__}); pass a non-empty list of "
            "TextActivations (one per captured text)"
        )
    first = batch[0]
    shape: tuple[int, int] | None = None
    for pos, text in enumerate(batch):
        if not isinstance(text, TextActivations):
            raise DataError(
                f"{who}: batch item {pos} is a {type(text).__name__}, expected TextActivations "
                "(as produced by an ActivationSource)"
            )
        acts = text.acts
        if not isinstance(acts, torch.Tensor) or acts.ndim != 3:
            got = tuple(acts.shape) if isinstance(acts, torch.Tensor) else type(acts).__name__
            raise DataError(
                f"{who}: text {text.index} has activations of shape {got}; expected "
                "[L, T, D] (layers, tokens, width)"
            )
        if not acts.is_floating_point():
            raise DataError(
                f"{who}: text {text.index} has activations of dtype {acts.dtype}; expected a "
                "floating dtype"
            )
        num_layers, num_tokens, width = acts.shape
        if num_tokens == 0 or width == 0 or num_layers == 0:
            raise DataError(
                f"{who}: text {text.index} has activations of shape {tuple(acts.shape)} with an "
                "empty axis; every text needs at least one layer, one token and one value"
            )
        if len(text.layers) != num_layers:
            raise DataError(
                f"{who}: text {text.index} lists {len(text.layers)} layers {text.layers} but its "
                f"activations have {num_layers}; the source must capture one row per listed layer"
            )
        if tuple(text.layers) != tuple(first.layers):
            raise DataError(
                f"{who}: text {text.index} was captured at layers {tuple(text.layers)} but text "
                f"{first.index} at {tuple(first.layers)}; aggregate texts captured at the same layers"
            )
        if shape is not None and width != shape[1]:
            raise DataError(
                f"{who}: text {text.index} has width D={width} but text {first.index} has "
                f"D={shape[1]}; aggregate texts captured at the same site of the same model"
            )
        if acts.device != first.acts.device:
            raise DataError(
                f"{who}: text {text.index} is on {acts.device} but text {first.index} on "
                f"{first.acts.device}; move the activations to one device first"
            )
        if needs_answer:
            start, end = (int(v) for v in text.span)
            if not 0 <= start < end <= num_tokens:
                raise DataError(
                    f"{who}: text {text.index} has answer span {tuple(text.span)} for {num_tokens} "
                    "tokens; the span must hold at least one token (0 <= start < end <= T). "
                    "Drop texts with empty answers or fix the answer-token offsets"
                )
        shape = (num_layers, width)
    assert shape is not None
    return shape


class MeanConfig(ComponentConfig):
    """``mean`` has no options."""


class LastTokenConfig(ComponentConfig):
    """``last_token`` has no options."""


class MeanAggregator(GraphAggregator):
    """Mean of the answer tokens' activations, per layer.

    ``[B, L, D]`` float32 on the activations' device; the mean is taken in float32
    whatever the captured dtype.
    """

    name: ClassVar[str] = "mean"
    Config: ClassVar[type[ComponentConfig]] = MeanConfig

    def aggregate(self, batch: list[TextActivations]) -> torch.Tensor:
        check_batch(batch, "MeanAggregator", needs_answer=True)
        out = torch.stack([t.answer.to(torch.float32).mean(dim=1) for t in batch])
        check_finite(out, "MeanAggregator: answer-token activations")
        return out


class LastTokenAggregator(GraphAggregator):
    """Activation of the last token of the whole text, per layer (ITI's feature).

    ``[B, L, D]`` float32 on the activations' device. The answer span is not used.
    """

    name: ClassVar[str] = "last_token"
    Config: ClassVar[type[ComponentConfig]] = LastTokenConfig

    def aggregate(self, batch: list[TextActivations]) -> torch.Tensor:
        check_batch(batch, "LastTokenAggregator", needs_answer=False)
        out = torch.stack([t.last.to(torch.float32) for t in batch])
        check_finite(out, "LastTokenAggregator: last-token activations")
        return out

"""The ``MisalignmentEstimator`` role: per-token signals that modulate an edit."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, ClassVar

import torch

from ..component import Component
from ..types import EditTargets, EstimatorInputs

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from ..backends.base import ForwardContext
    from ..models.base import ModelAdapter
    from ..plan import SignalPlan

__all__ = ["MisalignmentEstimator", "SignalRuntime"]


class SignalRuntime(ABC):
    """Device-bound, per-installation object evaluated inside the forward pass.

    Built by :meth:`MisalignmentEstimator.bind` when edits are installed; it owns
    copies of the estimator's weights on the right devices and no global state.
    """

    #: Layers whose incoming residual stream :meth:`signals` needs (for a logit lens).
    residual_layers: frozenset[int] = frozenset()

    @abstractmethod
    def signals(
        self, layer: int, site_input: torch.Tensor, residual_in: torch.Tensor | None, ctx: ForwardContext
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Per-token signals for the targets of ``layer``.

        Args:
            layer: the layer being edited.
            site_input: ``[B, T', D]`` activations at the edited positions (before the edit).
            residual_in: ``[B, T', hidden]`` residual stream entering ``layer`` at the
                same positions, if ``layer`` is in :attr:`residual_layers`.
            ctx: the installation's typed per-forward context
                (:class:`~tae_framework.backends.base.ForwardContext`): the edited
                positions, values shared across layers within one forward pass (e.g.
                one logit lens reused by later layers), recorded signals.

        Returns:
            ``(p, u)``: ``p`` is ``[B, T', K_layer]`` misalignment probability per
            target, ``u`` is ``[B, T', 1]`` uncertainty; either may be ``None``.
        """


class MisalignmentEstimator(Component):
    """Learns per-token signals (TAE's p and u) from token-level fitting data.

    Example:
        A constant estimator (p = 0.5 everywhere) is a complete implementation::

            >>> import torch
            >>> from tae_framework.estimators.base import MisalignmentEstimator, SignalRuntime
            >>> class Half(SignalRuntime):
            ...     def __init__(self, per_layer):
            ...         self.per_layer = per_layer
            ...     def signals(self, layer, site_input, residual_in, ctx):
            ...         k = self.per_layer[layer]
            ...         return site_input.new_full((*site_input.shape[:2], k), 0.5), None
            >>> class Constant(MisalignmentEstimator):
            ...     name = "constant"
            ...     def fit(self, inputs):
            ...         self.num_targets_ = inputs.targets.num_targets
            ...         return self
            ...     def bind(self, model, adapter, targets):
            ...         return Half({l: len(ix) for l, ix in targets.by_layer().items()})
    """

    role: ClassVar[str] = "estimator"

    @abstractmethod
    def fit(self, inputs: EstimatorInputs) -> MisalignmentEstimator:
        """Learn from token-level fitting data; return ``self``."""

    @abstractmethod
    def bind(self, model: PreTrainedModel, adapter: ModelAdapter, targets: EditTargets) -> SignalRuntime:
        """Return a runtime evaluating the signals on ``model`` (device-local)."""

    def signal_plan(self, targets: EditTargets) -> SignalPlan | None:
        """The fitted signals as backend-neutral data (a :class:`~tae_framework.plan.SignalPlan`)
        for an edit plan, or ``None`` (the default): the plan then carries the estimator
        itself and only the PyTorch-hook backend, through :meth:`bind`, can install it."""
        return None

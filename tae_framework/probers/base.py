"""The ``Prober`` role: rank (layer, unit) pairs, pick the top K and their directions."""

from __future__ import annotations

from abc import abstractmethod
from typing import ClassVar

import torch

from ..component import Component
from ..types import EditTargets, ProbeInputs

__all__ = ["Prober"]


class Prober(Component):
    """Learns which units to edit and in which direction.

    Contract:
        * :meth:`fit` takes :class:`~tae_framework.types.ProbeInputs`, sets
          ``scores_`` (``[L, U]`` ranking metric) and ``targets_`` (an
          :class:`~tae_framework.types.EditTargets` with unit sigmas) and returns self.
        * :meth:`calibrate` takes the tuning texts' last-token activations at the
          selected targets (``[N_tune, K, d]``) and sets the sigmas.
        * :attr:`needs_token_validation` tells the pipeline whether to capture
          token-level activations of the validation answers.

    Example:
        A prober that edits the first unit of the last layer along the mean
        difference of the two classes::

            >>> import torch
            >>> from tae_framework.probers.base import Prober
            >>> from tae_framework.types import EditTargets
            >>> class FirstUnit(Prober):
            ...     name = "first-unit"
            ...     def fit(self, inputs):
            ...         f = inputs.features[:, -1, 0]
            ...         d = f[inputs.labels == 1].mean(0) - f[inputs.labels == 0].mean(0)
            ...         L, U, dim = inputs.site_shape
            ...         self.scores_ = torch.zeros(L, U)
            ...         self.targets_ = EditTargets("heads", torch.tensor([L - 1]), torch.tensor([0]),
            ...                                     (d / d.norm())[None], torch.ones(1), self.scores_, dim)
            ...         return self
    """

    role: ClassVar[str] = "prober"
    #: The site this prober needs (``"heads"`` or ``"residual"``), or ``None`` for any.
    required_site: ClassVar[str | None] = None

    @property
    def needs_token_validation(self) -> bool:
        """Whether :meth:`fit` wants ``val_tokens`` (token-level head ranking)."""
        return False

    @abstractmethod
    def fit(self, inputs: ProbeInputs) -> Prober:
        """Fit probes, select targets and their unit directions; return ``self``."""

    def calibrate(self, tuning: torch.Tensor) -> Prober:
        """Set each target's sigma from ``[N_tune, K, d]`` activations.

        Default: population standard deviation (ddof = 0) of the projections on the
        unit directions, as ITI and TAE do.
        """
        self.check_is_fitted()
        targets: EditTargets = self.targets_
        proj = torch.einsum("nkd,kd->nk", tuning.float(), targets.directions.float())
        self.targets_ = targets.with_sigmas(proj.std(dim=0, unbiased=False))
        return self

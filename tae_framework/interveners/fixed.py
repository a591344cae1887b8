"""Fixed-strength edits: ITI's rule (``alpha * sigma`` per unit, same at every token)."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from ..config import ComponentConfig
from ..plan import EditPlan, EditScope, FixedStrength
from ..types import EditTargets
from .base import Intervener

__all__ = ["FixedIntervener"]


class FixedIntervener(Intervener):
    """Adds ``alpha * sigma_k * direction_k`` to every edited unit at every scoped token.

    This is Inference-Time Intervention's rule; with a residual-site target whose
    sigma is the norm of a mean difference it is also Contrastive Activation
    Addition's. The per-layer edit is one precomputed vector, so the cost per forward
    is one addition per edited layer.
    """

    name = "fixed"

    class Config(ComponentConfig):
        alpha: float = Field(default=15.0, description="Strength multiplier (ITI's alpha).")
        use_sigma: bool = Field(
            default=True, description="Scale each unit's edit by its sigma (spread along the direction)."
        )

    def fit(self, targets: EditTargets, estimator: Any = None) -> FixedIntervener:
        self.targets_ = targets
        return self

    def scales(self):
        t: EditTargets = self.targets_
        return self.config.alpha * (t.sigmas if self.config.use_sigma else t.sigmas.new_ones(t.num_targets))

    def plan(self, scope: EditScope | str = "last") -> EditPlan:
        return EditPlan.from_targets(self.targets_, self.scales(), FixedStrength())

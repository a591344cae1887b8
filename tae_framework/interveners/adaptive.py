"""TAE's misalignment-aware adaptive intervention (MAI).

Each edited head h at each scoped token gets
``alpha * sigma_h * (1 + beta * p_h + (1 - beta) * u)`` along its direction, where
``p_h`` is the estimator's probability that the next token is misaligned and ``u``
the logit-lens uncertainty of the residual stream entering the layer.

On plain text (``scope="all"``: CE loss and KL) ``u_on_all_scope=False`` reproduces
the reference code, which has no u there and does not weight p by beta: the strength
is ``alpha * sigma_h * (1 + p_h)``.
"""

from __future__ import annotations

from pydantic import Field

from ..config import ComponentConfig
from ..errors import ConfigError
from ..estimators.base import MisalignmentEstimator
from ..plan import AdaptiveStrength, BoundSignals, EditPlan, EditScope, FixedStrength, layer_edits
from ..types import EditTargets
from .base import Intervener

__all__ = ["AdaptiveIntervener"]


class AdaptiveIntervener(Intervener):
    """Per-token strength ``alpha * sigma * (1 + beta p + (1 - beta) u)``.

    Switches for ablations: ``use_p=False`` (uncertainty only), ``use_u=False``
    (probability only), ``use_base=False`` (drop the ``+1``: edits only where the
    signals are high). With both signals off and the base on it is the ITI rule.
    """

    name = "mai"

    class Config(ComponentConfig):
        alpha: float = Field(default=15.0, description="Strength multiplier (alpha).")
        beta: float = Field(
            default=0.5, ge=0.0, le=1.0, description="Weight of p against u in the per-token strength."
        )
        use_p: bool = Field(default=True, description="Use the misalignment probability p.")
        use_u: bool = Field(default=True, description="Use the logit-lens uncertainty u.")
        use_base: bool = Field(default=True, description="Keep the constant 1 in (1 + w).")
        u_on_all_scope: bool = Field(
            default=True,
            description="Use u when every position is edited (CE/KL on text). False reproduces "
            "the reference code there: no u, and p at full weight (strength 1 + p, not 1 + beta p).",
        )

    def fit(self, targets: EditTargets, estimator: MisalignmentEstimator | None = None) -> AdaptiveIntervener:
        cfg = self.config
        if estimator is None and (cfg.use_p or cfg.use_u):
            raise ConfigError(
                "intervener 'mai' needs an estimator for p and u: add an estimator (e.g. type 'mai') "
                "to the pipeline config, or set use_p=False and use_u=False"
            )
        if estimator is not None:
            estimator.check_is_fitted()
        self.targets_ = targets
        self.estimator = estimator
        return self

    def plan(self, scope: EditScope | str = "last") -> EditPlan:
        t: EditTargets = self.targets_
        scope = EditScope.coerce(scope)
        cfg = self.config
        edits = tuple(layer_edits(t, cfg.alpha * t.sigmas))
        use_u = cfg.use_u and (scope.mode != "all" or cfg.u_on_all_scope)
        # The reference mixes p with beta only when it has u; without u (its plain-text
        # CE/KL runs) the strength is alpha * sigma * (1 + p).
        beta = cfg.beta if use_u or not cfg.use_u else 1.0
        if not (cfg.use_p or use_u):
            return EditPlan(t.site, edits if cfg.use_base else (), FixedStrength())
        estimator = getattr(self, "estimator", None)
        if estimator is None:
            raise ConfigError("intervener 'mai' was loaded without its estimator: load the whole pipeline")
        signals = estimator.signal_plan(t)
        if signals is None:  # an estimator that only knows how to bind itself to a torch model
            estimator.check_is_fitted()
            signals = BoundSignals(estimator, t)
        rule = AdaptiveStrength(signals, beta, use_p=cfg.use_p, use_u=use_u, use_base=cfg.use_base)
        return EditPlan(t.site, edits, rule)

"""The ``Intervener`` role: describe the learned edits as a plan; a backend installs it."""

from __future__ import annotations

from abc import abstractmethod
from typing import TYPE_CHECKING, ClassVar

from ..component import Component
from ..errors import TAEError
from ..types import EditTargets

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from ..editing import EditSession
    from ..estimators.base import MisalignmentEstimator
    from ..models.base import ModelAdapter
    from ..plan import EditPlan, EditScope

__all__ = ["Intervener"]


class Intervener(Component):
    """Turns edit targets (and optional per-token signals) into forward-pass edits.

    :meth:`fit` stores the targets (``targets_``); :meth:`plan` describes the edits
    as an :class:`~tae_framework.plan.EditPlan` (sites, heads, directions, strength
    rule: plain data, no module); :meth:`install` hands that plan to the PyTorch-hook
    backend and returns its :class:`~tae_framework.backends.torch_hooks.EditSession`,
    a context manager that adds the edits when entered and removes every PyTorch
    handle when it exits. Implement :meth:`plan`; override :meth:`install` only for
    edits a plan cannot describe (they then work with the PyTorch backend only).

    Example:
        Half of ITI's strength, as a plan::

            >>> from tae_framework.interveners.base import Intervener
            >>> from tae_framework.plan import EditPlan
            >>> class HalfStrength(Intervener):
            ...     name = "half"
            ...     def fit(self, targets, estimator=None):
            ...         self.targets_ = targets
            ...         return self
            ...     def plan(self, scope="last"):
            ...         return EditPlan.from_targets(self.targets_, 0.5 * self.targets_.sigmas)
    """

    role: ClassVar[str] = "intervener"

    @abstractmethod
    def fit(
        self, targets: EditTargets, estimator: MisalignmentEstimator | None = None
    ) -> Intervener:
        """Store the targets (and the estimator, when used); return ``self``."""

    def plan(self, scope: EditScope | str = "last") -> EditPlan:
        """The fitted edits as a backend-neutral :class:`~tae_framework.plan.EditPlan`.

        ``scope`` is the scope the plan will run in (a strength rule may depend on it,
        e.g. MAI on plain text).
        """
        raise TAEError(
            f"intervener '{self.name}' ({type(self).__name__}) does not describe its edits as a plan: "
            "implement plan(scope) returning a tae_framework.plan.EditPlan"
        )

    def install(
        self, model: PreTrainedModel, adapter: ModelAdapter, scope: EditScope | str, record: bool = False
    ) -> EditSession:
        """Return a context manager that edits ``model`` within ``scope`` (the
        PyTorch-hook backend installing :meth:`plan`).

        ``record=True`` keeps the per-token multipliers in ``session.trace`` (figures).
        """
        from ..backends.torch_hooks import install_plan
        from ..plan import EditScope

        scope = EditScope.coerce(scope)
        session = install_plan(self.plan(scope), model, adapter, scope, record=record)
        alpha = getattr(self.config, "alpha", None)
        if isinstance(alpha, (int, float)) and not isinstance(alpha, bool):
            session.strength = ("alpha", float(alpha))  # the scales grow with it: name it in range errors
        return session

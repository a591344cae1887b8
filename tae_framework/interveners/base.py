"""The ``Intervener`` role: install the learned edits on a live model."""

from __future__ import annotations

from abc import abstractmethod
from typing import TYPE_CHECKING, ClassVar

from ..component import Component
from ..types import EditTargets

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from ..editing import EditScope, EditSession
    from ..estimators.base import MisalignmentEstimator
    from ..models.base import ModelAdapter

__all__ = ["Intervener"]


class Intervener(Component):
    """Turns edit targets (and optional per-token signals) into forward-pass edits.

    :meth:`fit` stores the targets (``targets_``); :meth:`install` returns an
    :class:`~tae_framework.editing.EditSession`, a context manager that adds the
    edits when entered and removes every PyTorch handle when it exits.

    Example:
        Half of ITI's strength, built on the editing engine::

            >>> from tae_framework.interveners.base import Intervener
            >>> from tae_framework.editing import EditSession, layer_edits
            >>> class HalfStrength(Intervener):
            ...     name = "half"
            ...     def fit(self, targets, estimator=None):
            ...         self.targets_ = targets
            ...         return self
            ...     def install(self, model, adapter, scope, record=False):
            ...         edits = layer_edits(self.targets_, scale=0.5 * self.targets_.sigmas)
            ...         return EditSession(model, adapter, self.targets_.site, edits, scope, record=record)
    """

    role: ClassVar[str] = "intervener"

    @abstractmethod
    def fit(
        self, targets: EditTargets, estimator: MisalignmentEstimator | None = None
    ) -> Intervener:
        """Store the targets (and the estimator, when used); return ``self``."""

    @abstractmethod
    def install(
        self, model: PreTrainedModel, adapter: ModelAdapter, scope: EditScope, record: bool = False
    ) -> EditSession:
        """Return a context manager that edits ``model`` within ``scope``.

        ``record=True`` keeps the per-token multipliers in ``session.trace`` (figures).
        """

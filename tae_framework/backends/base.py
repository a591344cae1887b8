"""What every edit backend shares: its interface and the typed per-forward context."""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

import torch

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..models.base import ModelAdapter
    from ..plan import EditPlan, EditScope

__all__ = ["Backend", "ForwardContext", "check_edit_range", "usable_edit_limit"]

_MISSING = object()


@dataclass
class ForwardContext:
    """Values shared by the strength rules of one installation, within a forward pass.

    The backend creates one per installed plan and passes it to every strength rule
    (modulator) and signal evaluation; rules read and write only these named fields.

    Attributes:
        record: keep per-token signals in :attr:`signals` (for figures).
        span_positions: host-side ``(batch, position)`` indices of the edited positions
            (``span`` scope with a CPU mask), so per-position signals run only there;
            ``None`` when unknown (edit everywhere in scope).
        residual_in: layer -> ``[B, T', hidden]`` residual stream entering that layer at
            the scoped positions, for the layers a rule asked for (refreshed every forward).
        shared_u: an uncertainty computed at one layer and reused by later ones in the
            same forward (TAE's shared lens).
        signals: recorded ``(layer, p, u)`` per edited layer and forward, when :attr:`record`.
    """

    record: bool = False
    span_positions: tuple[torch.Tensor, torch.Tensor] | None = None
    residual_in: dict[int, torch.Tensor] = field(default_factory=dict)
    shared_u: torch.Tensor | None = None
    signals: list[tuple[int, torch.Tensor | None, torch.Tensor | None]] = field(default_factory=list)
    _positions_on: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = field(
        default_factory=dict, repr=False
    )

    def set_span_positions(self, positions: tuple[torch.Tensor, torch.Tensor] | None) -> None:
        """Set :attr:`span_positions` and forget their device copies."""
        self.span_positions = positions
        self._positions_on.clear()

    def span_positions_on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor] | None:
        """:attr:`span_positions` on ``device``, copied once per device (non-blocking)."""
        if self.span_positions is None:
            return None
        hit = self._positions_on.get(device)
        if hit is None:
            b, t = self.span_positions
            hit = self._positions_on[device] = (
                b.to(device, non_blocking=True), t.to(device, non_blocking=True)
            )
        return hit

    def end_installation(self) -> None:
        """Drop per-forward tensors when the edits are removed (recorded signals and
        the span stay readable)."""
        self.residual_in.clear()
        self.shared_u = None
        self._positions_on.clear()

    @classmethod
    def coerce(cls, value: ForwardContext | dict | None) -> ForwardContext:
        """A context from ``None``, a context, or a dict of field values (older callers)."""
        if value is None:
            return cls()
        if isinstance(value, ForwardContext):
            return value
        ctx = cls()
        for key, v in value.items():
            ctx[key] = v
        return ctx

    # -- read-only mapping view of the public fields, for code written against the
    # former ``EditSession.state`` dict (``state["signals"]``, ``state.get("record")``)
    def _check_key(self, key: Any) -> str:
        names = [f.name for f in fields(self) if not f.name.startswith("_")]
        if key not in names:
            raise KeyError(
                f"{key!r} is not a field of the per-forward context; its fields are {', '.join(names)}"
            )
        return key

    def __getitem__(self, key: str) -> Any:
        return getattr(self, self._check_key(key))

    def __setitem__(self, key: str, value: Any) -> None:
        if self._check_key(key) == "span_positions":
            self.set_span_positions(value)
        else:
            setattr(self, key, value)

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default


class Backend(ABC):
    """Installs edit plans on live models.

    A backend receives an :class:`~tae_framework.plan.EditPlan` and returns a context
    manager that applies it while active and removes every trace of it on exit. It
    resolves sites through the adapter's site table, moves the plan's tensors once per
    execution device, and creates one :class:`ForwardContext` per installation.
    Plans it cannot run (a signal kind it does not know) raise
    :class:`~tae_framework.errors.ConfigError` naming the kind.

    Example:
        A backend that refuses adaptive plans and delegates the rest::

            >>> from tae_framework.backends.base import Backend
            >>> from tae_framework.backends.torch_hooks import TorchHooksBackend
            >>> from tae_framework.plan import FixedStrength
            >>> class FixedOnly(Backend):
            ...     name = "fixed-only"
            ...     def install(self, plan, model, adapter, scope="last", record=False):
            ...         if not isinstance(plan.strength, FixedStrength):
            ...             raise ValueError("fixed strengths only")
            ...         return TorchHooksBackend().install(plan, model, adapter, scope, record)
    """

    name: str = "backend"

    @abstractmethod
    def install(
        self,
        plan: EditPlan,
        model: Any,
        adapter: ModelAdapter,
        scope: EditScope | str = "last",
        record: bool = False,
    ) -> AbstractContextManager:
        """Return a context manager that edits ``model`` per ``plan`` within ``scope``."""


#: Edited activations are squared in float32 by the models' normalisation layers
#: (RMSNorm / LayerNorm): beyond this magnitude the square is inf whatever the dtype.
_SQUARE_LIMIT = float(torch.finfo(torch.float32).max) ** 0.5


def usable_edit_limit(dtype: torch.dtype) -> float:
    """The largest magnitude an edit value may have on activations of ``dtype``: the
    dtype's largest finite value, and at most ~1.8e19 (whose square still fits float32)."""
    return min(float(torch.finfo(dtype).max), _SQUARE_LIMIT)


def check_edit_range(
    peak: tuple[float, int, int],
    dtype: torch.dtype,
    site: str,
    strength: tuple[str, float] | None = None,
    factor: float = 1.0,
) -> None:
    """Refuse an edit whose largest value (``peak`` from
    :meth:`~tae_framework.plan.EditPlan.peak_edit`) does not fit activations of ``dtype``.

    ``strength`` is ``(name, value)`` of the setting the scales grow with (the
    intervener's ``("alpha", 15.0)``), to name its largest usable value; ``factor`` the
    strength rule's largest per-token factor included in ``peak``. Host arithmetic only.

    Raises:
        ConfigError: the edit would make the activations inf (and every output NaN).
    """
    if not dtype.is_floating_point:
        return
    value, layer, unit = peak
    limit = usable_edit_limit(dtype)
    if value <= limit:
        return
    name = str(dtype).removeprefix("torch.")
    why = (
        f"{limit:.4g}, the largest value {name} holds"
        if limit < _SQUARE_LIMIT
        else f"{limit:.3g}, beyond which its square (taken in float32 by the model's normalisation layers) is inf"
    )
    what = "scale * direction" + (f" (times the per-token factor, up to {factor:g})" if factor != 1.0 else "")
    fix = "lower the edit's scales"
    if strength is not None:
        key, current = strength
        what = f"{key} * sigma * direction" + (f" * the per-token factor (up to {factor:g})" if factor != 1.0 else "")
        if value == value and current:  # the scales grow linearly with it
            fix = (
                f"the largest usable {key} on this {name} model is at most about {abs(current) * limit / value:.3g} "
                f"(it is {current:g} now): lower {key}"
            )
        else:
            fix = f"lower {key}"
    where = f"head {unit}" if site == "heads" else f"unit {unit} of the {site} site"
    raise ConfigError(
        f"the edit is too strong for {name} activations: its largest value, {what} = {value:.3g} "
        f"at layer {layer}, {where}, exceeds {why}, so the edited activations would overflow "
        f"and every output would be NaN; {fix}"
        + ("" if dtype == torch.float32 or limit >= _SQUARE_LIMIT else ", or run the model in float32")
    )


def unsupported_signals(backend: str, signals: Any) -> ConfigError:
    """The error of a backend that cannot evaluate ``signals``."""
    return ConfigError(
        f"the {backend} backend cannot evaluate signals of kind "
        f"'{getattr(signals, 'name', type(signals).__name__)}' ({type(signals).__name__}): "
        "install the plan with a backend that supports them"
    )

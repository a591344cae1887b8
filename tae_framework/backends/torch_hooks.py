"""The PyTorch-hook backend: installs edit plans with forward taps on the model's modules.

An :class:`EditSession` is a context manager. On entry it installs PyTorch taps on the
module of each edited layer that holds the plan's site (a forward pre-hook when the
site is the module's input, e.g. the head-wise site; a forward hook when it is the
output, e.g. the residual stream leaving a layer), as the adapter's site table says;
on exit, including on exceptions, it removes every handle.

Within a layer all edited units are handled by one matrix product: each edited unit
``k`` contributes ``coef[..., k] * scale_k * direction_k`` placed in its slice of the
site vector, so ``delta = coef @ W`` with ``W`` of shape ``[K_layer, D]``. Without a
per-token modulator the edit is one precomputed vector per layer.

Scopes (:class:`~tae_framework.plan.EditScope`) say which positions of each forward
are edited (``last``, ``span``, ``all``).

Edit tensors are moved to each site's device and dtype once, on first use, and cached
per device; taps never read module weights, take devices from the tensors they
receive, and never synchronise with the host.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .. import distributed
from ..errors import ConfigError, ModelMismatchError, TAEError
from ..models.placement import check_sites_placed
from ..models.sites import register_tap
from ..plan import (
    AdaptiveStrength,
    BoundSignals,
    EditPlan,
    EditScope,
    FixedStrength,
    LayerPlan,
    ProbeLensSignals,
)
from ..types import Site, check_finite
from .base import Backend, ForwardContext, check_edit_range, unsupported_signals

__all__ = ["EditSession", "Modulator", "TorchHooksBackend", "count_taps", "install_plan", "is_installed"]

#: ``modulator(layer, site_input, residual_in, context) -> [B, T', K_layer]`` multipliers
#: of each unit's edit at the scoped positions (``site_input`` is ``[B, T', D]``).
Modulator = Callable[[int, torch.Tensor, "torch.Tensor | None", ForwardContext], torch.Tensor]

_ACTIVE_ATTR = "_tae_active_edits"


def _active_owners(model: nn.Module) -> dict[Any, str]:
    """Owners of the edit sessions active on ``model`` (stored on the model itself)."""
    active = model.__dict__.get(_ACTIVE_ATTR)
    if active is None:
        active = {}
        object.__setattr__(model, _ACTIVE_ATTR, active)
    return active


def is_installed(model: nn.Module, owner: Any) -> bool:
    """Whether a session owned by ``owner`` is active on ``model``."""
    return owner in model.__dict__.get(_ACTIVE_ATTR, {})


def count_taps(model: nn.Module) -> int:
    """Number of PyTorch forward hooks / pre-hooks currently installed on ``model``."""
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())


def _as_output_tensor(output: Any) -> tuple[torch.Tensor, Callable[[torch.Tensor], Any]]:
    """Split a module output into its hidden-state tensor and a function rebuilding it."""
    if isinstance(output, torch.Tensor):
        return output, lambda t: t
    if isinstance(output, tuple):
        return output[0], lambda t: (t, *output[1:])
    if hasattr(output, "last_hidden_state"):  # ModelOutput
        def rebuild(t: torch.Tensor) -> Any:
            output["last_hidden_state"] = t
            return output
        return output.last_hidden_state, rebuild
    raise TAEError(f"cannot find the hidden states in a module output of type {type(output).__name__}")


def _input_key(args: tuple, kwargs: dict) -> int | str | None:
    """Where a module's first input is: a position in ``args`` or a key of ``kwargs``."""
    if args:
        return 0
    if "hidden_states" in kwargs:
        return "hidden_states"
    return next(iter(kwargs), None)


class EditSession:
    """Context manager that installs edits on a model and removes them on exit.

    Build one from a plan with :func:`install_plan` (what interveners do), or by hand
    from layer edits.

    Args:
        model: the model to edit.
        adapter: its :class:`~tae_framework.models.base.ModelAdapter`.
        site: a site name of the adapter's site table (``"heads"``, ``"residual"`` ...).
        edits: one :class:`~tae_framework.plan.LayerPlan` per edited layer.
        scope: which positions are edited (``EditScope`` or its mode name).
        modulator: optional per-token multiplier of each unit's edit.
        residual_layers: layers whose incoming residual stream the modulator needs
            (found in ``context.residual_in``).
        record: keep each call's multipliers in :attr:`trace` and the signals in
            ``context.signals`` (for figures).
    """

    def __init__(
        self,
        model: nn.Module,
        adapter: Any,
        site: Site | str,
        edits: list[LayerPlan],
        scope: EditScope | str = "last",
        modulator: Modulator | None = None,
        residual_layers: frozenset[int] | set[int] = frozenset(),
        record: bool = False,
    ):
        self.model = model
        self.adapter = adapter
        self.site = site
        self.spec = adapter.site_spec(site)
        self.edits = {e.layer: e for e in edits}
        if len(self.edits) != len(edits):
            raise ConfigError("two LayerEdit objects name the same layer: merge them")
        self.scope = EditScope.coerce(scope)
        self.modulator = modulator
        self.residual_layers = frozenset(residual_layers)
        self.record = record
        self.trace: list[tuple[int, torch.Tensor]] = []
        #: The typed per-forward context handed to the modulator.
        self.context = ForwardContext(record=record)
        #: The plan this session installs (``None`` for a hand-built session).
        self.plan: EditPlan | None = None
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._dense: dict[int, torch.Tensor] = {}
        self._device_cache: dict[tuple[int, torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}
        self._span_cache: dict[torch.device, torch.Tensor] = {}
        #: Who installs these edits, a hashable key (set by ``AlignmentPipeline.apply`` to
        #: a digest of the pipeline's config and targets). Two sessions with the same
        #: owner are never active on one model at once: the edit would be added twice.
        #: ``None``: no check (hand-built sessions may stack on purpose).
        self.owner: Any = None
        #: How the owner's edit is named in the error.
        self.owner_label = "this edit"
        #: ``(name, value)`` of the setting the edit's scales grow with (the intervener's
        #: alpha), so a too-strong edit names its largest usable value; ``None``: unknown.
        self.strength: tuple[str, float] | None = None
        #: The largest per-token factor the modulator applies to the scales (1: none or unknown).
        self.max_factor = 1.0
        self._registered = False
        self._checked_dtypes: set[torch.dtype] = set()
        self._validate()

    @property
    def state(self) -> ForwardContext:
        """The per-forward context (:attr:`context`), under its former name; it also
        answers ``state["signals"]`` / ``state.get("record")`` for older code."""
        return self.context

    # -- validation ------------------------------------------------------------------
    def _validate(self) -> None:
        shape = self.adapter.shape(self.model)
        info = self.adapter.site_info(self.model, self.site)
        self.num_units, self.unit_dim = info.num_units, info.unit_dim
        for layer, e in self.edits.items():
            if not 0 <= layer < shape.num_layers:
                raise ModelMismatchError(
                    f"edit names layer {layer}, but the model has layers 0..{shape.num_layers - 1}"
                )
            if e.units.numel() and (int(e.units.min()) < 0 or int(e.units.max()) >= info.num_units):
                raise ModelMismatchError(
                    f"edit of layer {layer} names unit(s) {e.units.tolist()}, but the {self.site} site "
                    f"has units 0..{info.num_units - 1}"
                )
            if e.directions.ndim != 2 or e.directions.shape[1] != info.unit_dim:
                raise ModelMismatchError(
                    f"edit of layer {layer}: directions have size {tuple(e.directions.shape)[1:]}, "
                    f"but a {self.site} unit of this model has {info.unit_dim} values"
                )
            check_finite(e.directions, f"edit directions of layer {layer}")
            if e.scales.is_floating_point() and not bool(torch.isfinite(e.scales).all()):
                raise ConfigError(
                    f"edit scales of layer {layer} are not finite ({e.scales.tolist()[:4]}): the strength "
                    "(alpha * sigma) overflows float32, or the fitted sigmas are damaged; use a smaller "
                    "alpha, or refit"
                )
            self._dense[layer] = e.dense(info.num_units, info.unit_dim)
        # Largest single value of the edit (before any per-token factor), on the host, once.
        self._peak = EditPlan(str(self.site), tuple(self.edits.values())).peak_edit() if self.edits else (0.0, -1, -1)
        unknown = self.residual_layers - set(range(shape.num_layers))
        if unknown:
            raise ModelMismatchError(f"residual stream requested for missing layer(s) {sorted(unknown)}")

    # -- span ------------------------------------------------------------------------
    def set_span(self, mask: torch.Tensor) -> None:
        """Positions to edit on the next forward passes (``span`` scope): ``[B, T]`` bool."""
        if self.scope.mode != "span":
            raise ConfigError(f"set_span needs scope 'span', this session has scope '{self.scope.mode}'")
        if mask.ndim != 2:
            raise ConfigError(f"span mask must be [batch, tokens], got shape {tuple(mask.shape)}")
        self.scope.span = mask.bool()
        self._span_cache.clear()
        # A host-side mask gives the edited positions for free (no device sync); signals
        # computed per position (the logit lens) then run only there.
        self.context.set_span_positions(
            torch.nonzero(self.scope.span, as_tuple=True) if self.scope.span.device.type == "cpu" else None
        )

    def _span_for(self, x: torch.Tensor) -> torch.Tensor:
        mask = self.scope.span
        if mask is None:
            raise ConfigError("scope 'span' needs a mask: call session.set_span(mask) before the forward pass")
        if tuple(mask.shape) != tuple(x.shape[:2]):
            raise ConfigError(
                f"span mask has shape {tuple(mask.shape)} but the forward pass has "
                f"[batch, tokens] = {tuple(x.shape[:2])}"
            )
        cached = self._span_cache.get(x.device)
        if cached is None:
            cached = self._span_cache[x.device] = mask.to(x.device, non_blocking=True)
        return cached

    # -- range of the edit against the activations' dtype --------------------------------
    def check_range(self, dtype: torch.dtype) -> None:
        """Refuse an edit that would overflow activations of ``dtype`` (host arithmetic on
        numbers computed at construction; each dtype checked once per session)."""
        if dtype in self._checked_dtypes:
            return
        value, layer, unit = self._peak
        check_edit_range((value * self.max_factor, layer, unit), dtype, str(self.site), self.strength, self.max_factor)
        self._checked_dtypes.add(dtype)

    # -- tensors per device ----------------------------------------------------------
    def _weights(self, layer: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        key = (layer, x.device, x.dtype)
        hit = self._device_cache.get(key)
        if hit is None:
            self.check_range(x.dtype)  # activations of a dtype not seen at installation
            dense = self._dense[layer].to(device=x.device)
            hit = (dense.to(x.dtype), dense.sum(0).to(x.dtype))
            self._device_cache[key] = hit
        return hit

    # -- the edit ----------------------------------------------------------------------
    def _edit(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        dense, summed = self._weights(layer, x)
        mode = self.scope.mode
        scoped = x[:, -1:] if mode == "last" else x
        if self.modulator is None:
            delta = summed.expand_as(scoped)
            coef = None
        else:
            resid = self.context.residual_in.get(layer) if layer in self.residual_layers else None
            coef = self.modulator(layer, scoped, resid, self.context)
            delta = torch.matmul(coef.to(x.dtype), dense)
        if mode == "span":
            m = self._span_for(x)[..., None]
            delta = delta * m.to(x.dtype)
            if coef is not None and self.record:
                coef = coef * m.to(coef.dtype)
        if self.record and coef is not None:
            self.trace.append((layer, coef.detach()))
        if mode == "last":
            if self.spec.in_place and not (torch.is_grad_enabled() and x.requires_grad):
                # no autograd graph holds x: edit the fresh activation in place (one kernel)
                x[:, -1:] += delta
                return x
            out = x.clone()
            out[:, -1:] += delta
            return out
        return x + delta

    def _edit_site(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """A rank of a tensor-parallel model sees a slice of the heads: the edit is
        computed on the whole site (gathered from every rank) and this rank keeps its slice."""
        full = self.num_units * self.unit_dim
        if self.spec.layout != "heads" or x.shape[-1] == full:
            return self._edit(layer, x)
        return distributed.local_site(self._edit(layer, distributed.gather_site(x, full)), x.shape[-1])

    def _input_tap(self, layer: int):
        def tap(module: nn.Module, args: tuple, kwargs: dict):
            key = _input_key(args, kwargs)
            if key is None:
                raise TAEError(f"the {self.site} module of layer {layer} was called without inputs")
            if key == 0:
                return (self._edit_site(layer, args[0]), *args[1:]), kwargs
            kwargs = dict(kwargs)
            kwargs[key] = self._edit_site(layer, kwargs[key])
            return args, kwargs

        return tap

    def _output_tap(self, layer: int):
        def tap(module: nn.Module, args: tuple, output: Any):
            hidden, rebuild = _as_output_tensor(output)
            return rebuild(self._edit_site(layer, hidden))

        return tap

    def _resid_in_tap(self, layer: int):
        def tap(module: nn.Module, args: tuple, kwargs: dict):
            h = args[0] if args else kwargs.get("hidden_states")
            if h is None:
                raise TAEError(f"cannot find the hidden states entering layer {layer}")
            if self.scope.mode == "last":
                h = h[:, -1:]
            self.context.residual_in[layer] = h

        return tap

    # -- context manager -----------------------------------------------------------------
    def __enter__(self) -> EditSession:
        if self._handles:
            raise TAEError("this EditSession is already active: create a new one to nest edits")
        if self.owner is not None:
            active = _active_owners(self.model)
            if self.owner in active:
                raise TAEError(
                    f"{active[self.owner]} is already installed on this model (a nested "
                    "`with pipe.apply(model)`, or pipe.generate()/pipe.score() inside one): its "
                    "edit would be added twice. Use the session you already have, or call "
                    "generate()/score() outside the `with` block"
                )
            active[self.owner] = self.owner_label
            self._registered = True
        try:
            modules = {i: self.adapter.site_module(self.model, i, self.site) for i in sorted(self.edits)}
            check_sites_placed(self.model, list(modules.values()), self.site)
            # Once per installation: the edit must fit the dtype of the edited modules
            # (their declared parameter dtype; no weight is read).
            for dtype in {d for d in map(_float_dtype, modules.values()) if d is not None}:
                self.check_range(dtype)
            for layer in sorted(self.residual_layers):
                self._handles.append(
                    self.adapter.layer_module(self.model, layer).register_forward_pre_hook(
                        self._resid_in_tap(layer), with_kwargs=True
                    )
                )
            for layer, mod in modules.items():
                tap = register_tap(mod, self.spec, self._input_tap(layer), self._output_tap(layer))
                self._handles.append(tap)
        except BaseException:
            self.remove()
            raise
        return self

    def remove(self) -> None:
        """Remove every installed handle (idempotent)."""
        while self._handles:
            self._handles.pop().remove()
        if self._registered:
            _active_owners(self.model).pop(self.owner, None)
            self._registered = False
        self.context.end_installation()
        self._device_cache.clear()
        self._span_cache.clear()

    def __exit__(self, *exc: object) -> None:
        self.remove()

    @property
    def active(self) -> bool:
        return bool(self._handles)


# -- plans -----------------------------------------------------------------------------
def _signal_runtime(signals: Any, model: nn.Module, adapter: Any):
    """A device-local evaluator of ``signals`` (a ``SignalRuntime``)."""
    if isinstance(signals, ProbeLensSignals):
        from ..estimators.mai import MAIRuntime

        return MAIRuntime(signals, model, adapter)
    if isinstance(signals, BoundSignals):
        return signals.estimator.bind(model, adapter, signals.targets)
    raise unsupported_signals("PyTorch-hook", signals)


def _adaptive_modulator(rule: AdaptiveStrength, runtime: Any, per_layer: dict[int, int]) -> Modulator:
    from ..functional import adaptive_strength

    use_p, use_u, use_base, beta = rule.use_p, rule.use_u, rule.use_base, rule.beta

    def modulator(layer: int, x: torch.Tensor, resid: torch.Tensor | None, ctx: ForwardContext):
        p, u = runtime.signals(layer, x, resid, ctx)
        if ctx.record:
            ctx.signals.append((layer, None if p is None else p.detach(), None if u is None else u.detach()))
        w = adaptive_strength(p if use_p else None, u if use_u else None, beta, use_base=use_base)
        return w.expand(x.shape[0], x.shape[1], per_layer[layer])

    return modulator


def _float_dtype(module: nn.Module) -> torch.dtype | None:
    """The dtype of a module's first floating-point parameter (metadata only), if any."""
    for p in module.parameters():
        if p.dtype.is_floating_point:
            return p.dtype
    return None


def install_plan(
    plan: EditPlan, model: nn.Module, adapter: Any, scope: EditScope | str = "last", record: bool = False
) -> EditSession:
    """An :class:`EditSession` applying ``plan`` to ``model`` (enter it to edit).

    Raises:
        ConfigError: the plan's site is not in the adapter's site table, or its signals
            are of a kind this backend cannot evaluate.
        ModelMismatchError: the plan names layers or units the model does not have.
    """
    scope = EditScope.coerce(scope)
    rule = plan.strength
    edits = list(plan.layers)
    if isinstance(rule, FixedStrength):
        session = EditSession(model, adapter, plan.site, edits, scope, record=record)
    else:
        runtime = _signal_runtime(rule.signals, model, adapter)
        per_layer = {p.layer: int(p.units.numel()) for p in plan.layers}
        residual = runtime.residual_layers if rule.use_u else frozenset()
        session = EditSession(
            model, adapter, plan.site, edits, scope,
            modulator=_adaptive_modulator(rule, runtime, per_layer), residual_layers=residual, record=record,
        )  # fmt: skip
    session.plan = plan
    session.max_factor = rule.max_factor
    return session


class TorchHooksBackend(Backend):
    """The PyTorch-hook backend as a :class:`~tae_framework.backends.base.Backend` object."""

    name = "torch_hooks"

    def install(self, plan, model, adapter, scope="last", record=False) -> EditSession:
        return install_plan(plan, model, adapter, scope, record)

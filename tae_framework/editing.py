"""The editing engine: add per-unit direction vectors to a model's activations
during its forward pass.

An :class:`EditSession` is a context manager. On entry it installs PyTorch taps
(forward pre-hooks on the head-wise site, forward hooks on decoder layers for the
residual site); on exit, including on exceptions, it removes every handle.

Within a layer all edited units are handled by one matrix product: each edited
unit ``k`` contributes ``coef[..., k] * scale_k * direction_k`` placed in its slice
of the site vector, so ``delta = coef @ W`` with ``W`` of shape ``[K_layer, D]``.
Without a per-token modulator the edit is one precomputed vector per layer.

Scopes (:class:`EditScope`) say which positions of each forward are edited:

* ``last``: only the last position of every forward pass. With left padding and a KV
  cache this is the last prompt token on the prefill pass and then each new token:
  the generation setting.
* ``span``: the positions of a ``[B, T]`` boolean mask given with
  :meth:`EditSession.set_span` before the forward (e.g. answer tokens when scoring).
* ``all``: every position (CE / KL on plain text).

Edit tensors are moved to each site's device and dtype once, on first use, and
cached per device; taps never read module weights, take devices from the tensors
they receive, and never synchronise with the host.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from . import distributed
from .errors import ConfigError, ModelMismatchError, TAEError
from .models.placement import check_sites_placed
from .types import EditTargets, Site, check_finite

__all__ = ["EditScope", "EditSession", "LayerEdit", "Modulator", "count_taps", "is_installed", "layer_edits"]

ScopeMode = Literal["last", "span", "all"]

#: ``modulator(layer, site_input, residual_in, state) -> [B, T', K_layer]`` multipliers
#: of each unit's edit at the scoped positions (``site_input`` is ``[B, T', D]``).
Modulator = Callable[[int, torch.Tensor, "torch.Tensor | None", dict], torch.Tensor]


@dataclass
class EditScope:
    """Which positions of each forward pass are edited."""

    mode: ScopeMode = "last"
    span: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.mode not in ("last", "span", "all"):
            raise ConfigError(f"unknown edit scope {self.mode!r}: use 'last', 'span' or 'all'")

    @classmethod
    def coerce(cls, scope: EditScope | str) -> EditScope:
        return scope if isinstance(scope, EditScope) else cls(scope)  # type: ignore[arg-type]


@dataclass
class LayerEdit:
    """The edits of one layer: ``K_layer`` units, their unit directions and scales.

    ``target_index`` maps the rows back to the global list of K targets.
    """

    layer: int
    units: torch.Tensor  # [K_l] long
    directions: torch.Tensor  # [K_l, d]
    scales: torch.Tensor  # [K_l]
    target_index: torch.Tensor  # [K_l] long

    def dense(self, num_units: int, unit_dim: int) -> torch.Tensor:
        """``[K_l, U*d]``: row k holds ``scale_k * direction_k`` in unit k's slice."""
        k = self.units.numel()
        w = torch.zeros(k, num_units, unit_dim, dtype=torch.float32)
        w[torch.arange(k), self.units] = self.directions.float() * self.scales.float()[:, None]
        return w.reshape(k, num_units * unit_dim)


def layer_edits(targets: EditTargets, scale: torch.Tensor | float) -> list[LayerEdit]:
    """Group targets by layer; ``scale`` is per target (``[K]``) or a scalar."""
    scale_t = torch.as_tensor(scale, dtype=torch.float32)
    if scale_t.ndim == 0:
        scale_t = scale_t.expand(targets.num_targets)
    if scale_t.numel() != targets.num_targets:
        raise ConfigError(f"scale has {scale_t.numel()} entries for {targets.num_targets} targets")
    return [
        LayerEdit(layer, targets.units[ix], targets.directions[ix], scale_t[ix], ix)
        for layer, ix in targets.by_layer().items()
    ]


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
    raise TAEError(f"cannot find the hidden states in a layer output of type {type(output).__name__}")


class EditSession:
    """Context manager that installs edits on a model and removes them on exit.

    Args:
        model: the model to edit.
        adapter: its :class:`~tae_framework.models.base.ModelAdapter`.
        site: ``"heads"`` or ``"residual"``.
        edits: one :class:`LayerEdit` per edited layer.
        scope: which positions are edited (``EditScope`` or its mode name).
        modulator: optional per-token multiplier of each unit's edit.
        residual_layers: layers whose incoming residual stream the modulator needs.
        record: keep each call's multipliers in :attr:`trace` (for figures).
    """

    def __init__(
        self,
        model: nn.Module,
        adapter: Any,
        site: Site,
        edits: list[LayerEdit],
        scope: EditScope | str = "last",
        modulator: Modulator | None = None,
        residual_layers: frozenset[int] | set[int] = frozenset(),
        record: bool = False,
    ):
        self.model = model
        self.adapter = adapter
        self.site = site
        self.edits = {e.layer: e for e in edits}
        if len(self.edits) != len(edits):
            raise ConfigError("two LayerEdit objects name the same layer: merge them")
        self.scope = EditScope.coerce(scope)
        self.modulator = modulator
        self.residual_layers = frozenset(residual_layers)
        self.record = record
        self.trace: list[tuple[int, torch.Tensor]] = []
        self.state: dict[str, Any] = {"record": record}
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
        self._registered = False
        self._validate()

    # -- validation ------------------------------------------------------------------
    def _validate(self) -> None:
        shape = self.adapter.shape(self.model)
        info = shape.site(self.site)
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
            check_finite(e.scales, f"edit scales of layer {layer}")
            self._dense[layer] = e.dense(info.num_units, info.unit_dim)
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
        for key in [k for k in self.state if isinstance(k, tuple) and k[0] == "span_positions"]:
            del self.state[key]  # device copies of the previous mask's positions
        self.state["span_positions"] = (
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

    # -- tensors per device ----------------------------------------------------------
    def _weights(self, layer: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        key = (layer, x.device, x.dtype)
        hit = self._device_cache.get(key)
        if hit is None:
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
            resid = self.state.get(("resid", layer)) if layer in self.residual_layers else None
            coef = self.modulator(layer, scoped, resid, self.state)
            delta = torch.matmul(coef.to(x.dtype), dense)
        if mode == "span":
            m = self._span_for(x)[..., None]
            delta = delta * m.to(x.dtype)
            if coef is not None and self.record:
                coef = coef * m.to(coef.dtype)
        if self.record and coef is not None:
            self.trace.append((layer, coef.detach()))
        if mode == "last":
            if not (torch.is_grad_enabled() and x.requires_grad):
                # no autograd graph holds x: edit the fresh activation in place (one kernel)
                x[:, -1:] += delta
                return x
            out = x.clone()
            out[:, -1:] += delta
            return out
        return x + delta

    def _edit_heads(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """A rank of a tensor-parallel model sees a slice of the heads: the edit is
        computed on the whole site (gathered from every rank) and this rank keeps its slice."""
        full = self.num_units * self.unit_dim
        if x.shape[-1] == full:
            return self._edit(layer, x)
        return distributed.local_site(self._edit(layer, distributed.gather_site(x, full)), x.shape[-1])

    def _head_tap(self, layer: int):
        def tap(module: nn.Module, args: tuple, kwargs: dict):
            if args:
                return (self._edit_heads(layer, args[0]), *args[1:]), kwargs
            key = next(iter(kwargs))
            kwargs = dict(kwargs)
            kwargs[key] = self._edit_heads(layer, kwargs[key])
            return args, kwargs

        return tap

    def _residual_tap(self, layer: int):
        def tap(module: nn.Module, args: tuple, output: Any):
            hidden, rebuild = _as_output_tensor(output)
            return rebuild(self._edit(layer, hidden))

        return tap

    def _resid_in_tap(self, layer: int):
        def tap(module: nn.Module, args: tuple, kwargs: dict):
            h = args[0] if args else kwargs.get("hidden_states")
            if h is None:
                raise TAEError(f"cannot find the hidden states entering layer {layer}")
            if self.scope.mode == "last":
                h = h[:, -1:]
            self.state[("resid", layer)] = h

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
            layers = self.adapter.layers(self.model)
            check_sites_placed(
                self.model, [self.adapter.site_module(self.model, i, self.site) for i in sorted(self.edits)], self.site
            )
            for layer in sorted(self.residual_layers):
                self._handles.append(
                    layers[layer].register_forward_pre_hook(self._resid_in_tap(layer), with_kwargs=True)
                )
            for layer in sorted(self.edits):
                if self.site == "heads":
                    mod = self.adapter.head_module(self.model, layer)
                    h = mod.register_forward_pre_hook(self._head_tap(layer), with_kwargs=True)
                else:
                    h = layers[layer].register_forward_hook(self._residual_tap(layer))
                self._handles.append(h)
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
        self.state = {
            "record": self.record,
            "signals": self.state.get("signals", []),
            "span_positions": self.state.get("span_positions"),
        }
        self._device_cache.clear()
        self._span_cache.clear()

    def __exit__(self, *exc: object) -> None:
        self.remove()

    @property
    def active(self) -> bool:
        return bool(self._handles)

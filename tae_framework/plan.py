"""Edit plans: what an intervener edits, as plain typed data that any backend can install.

An :class:`EditPlan` says, for one site, per edited layer: the global unit (head)
indices, their unit directions as one ``[K_layer, d]`` tensor, their fixed scales
(``alpha * sigma``), and the strength rule: :class:`FixedStrength` (the scales alone,
ITI / CAA) or :class:`AdaptiveStrength` (the scales times a per-token factor built
from signals, TAE's MAI). A plan holds tensors, numbers and names only: no
``nn.Module``, no hook, no device. A backend (the PyTorch-hook backend,
:mod:`tae_framework.backends.torch_hooks`; a serving engine later) turns a plan into
edits of a live model and moves its tensors once per execution device.

Example:
    >>> import torch
    >>> from tae_framework.plan import EditPlan, FixedStrength, LayerPlan
    >>> plan = EditPlan(
    ...     site="heads",
    ...     layers=(LayerPlan(1, torch.tensor([3]), torch.ones(1, 8), torch.tensor([2.0]), torch.tensor([0])),),
    ...     strength=FixedStrength(),
    ... )
    >>> plan.edited_layers, plan.num_targets
    ([1], 1)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from types import MappingProxyType
from typing import Any, ClassVar, Literal

import torch

from .errors import ConfigError
from .types import EditTargets

__all__ = [
    "AdaptiveStrength",
    "BoundSignals",
    "EditPlan",
    "EditScope",
    "FixedStrength",
    "LayerEdit",
    "LayerPlan",
    "LayerProbe",
    "ProbeLensSignals",
    "SignalPlan",
    "StrengthRule",
    "layer_edits",
    "plan_from_state",
    "plan_to_state",
    "plan_values",
]

ScopeMode = Literal["last", "span", "all"]


@dataclass
class EditScope:
    """Which positions of each forward pass are edited.

    * ``last``: only the last position of every forward pass. With left padding and a
      KV cache this is the last prompt token on the prefill pass and then each new
      token: the generation setting.
    * ``span``: the positions of a ``[B, T]`` boolean mask given before the forward
      (e.g. answer tokens when scoring).
    * ``all``: every position (CE / KL on plain text).
    """

    mode: ScopeMode = "last"
    span: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.mode not in ("last", "span", "all"):
            raise ConfigError(f"unknown edit scope {self.mode!r}: use 'last', 'span' or 'all'")

    @classmethod
    def coerce(cls, scope: EditScope | str) -> EditScope:
        return scope if isinstance(scope, EditScope) else cls(scope)  # type: ignore[arg-type]


@dataclass(frozen=True, eq=False)
class LayerPlan:
    """The edits of one layer: ``K_layer`` units (global head indices), their unit
    directions (one ``[K_layer, d]`` tensor) and fixed scales.

    ``target_index`` maps the rows back to the intervener's list of K targets.
    """

    layer: int
    units: torch.Tensor  # [K_l] long, global
    directions: torch.Tensor  # [K_l, d]
    scales: torch.Tensor  # [K_l]
    target_index: torch.Tensor  # [K_l] long

    def dense(self, num_units: int, unit_dim: int) -> torch.Tensor:
        """``[K_l, U*d]``: row k holds ``scale_k * direction_k`` in unit k's slice."""
        k = self.units.numel()
        w = torch.zeros(k, num_units, unit_dim, dtype=torch.float32)
        w[torch.arange(k), self.units] = self.directions.float() * self.scales.float()[:, None]
        return w.reshape(k, num_units * unit_dim)


#: The name the editing engine has always used for a layer's edits.
LayerEdit = LayerPlan


def layer_edits(targets: EditTargets, scale: torch.Tensor | float) -> list[LayerPlan]:
    """Group targets by layer; ``scale`` is per target (``[K]``) or a scalar."""
    scale_t = torch.as_tensor(scale, dtype=torch.float32)
    if scale_t.ndim == 0:
        scale_t = scale_t.expand(targets.num_targets)
    if scale_t.numel() != targets.num_targets:
        raise ConfigError(f"scale has {scale_t.numel()} entries for {targets.num_targets} targets")
    return [
        LayerPlan(layer, targets.units[ix], targets.directions[ix], scale_t[ix], ix)
        for layer, ix in targets.by_layer().items()
    ]


# -- signals ------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class SignalPlan:
    """Base of the per-token signal descriptions an adaptive strength rule reads.

    A backend knows how to evaluate each kind it supports (by class); :attr:`name`
    names the kind in messages.
    """

    name: ClassVar[str] = "signals"

    @property
    def residual_layers(self) -> frozenset[int]:
        """Layers whose incoming residual stream the signals need."""
        return frozenset()


@dataclass(frozen=True, eq=False)
class LayerProbe:
    """A linear probe per edited unit of one layer: ``p = sigmoid(x_unit . weight + bias)``."""

    units: torch.Tensor  # [K_l] long, global
    weight: torch.Tensor  # [K_l, d]
    bias: torch.Tensor  # [K_l]


@dataclass(frozen=True, eq=False)
class ProbeLensSignals(SignalPlan):
    """TAE's signals: ``p`` from one linear probe per edited head (on the head's
    activation), ``u`` the normalised entropy of a logit lens on the residual stream
    entering the layer.

    Attributes:
        site: the site the probes read (the edited site).
        unit_dim: values per unit.
        probes: layer -> its probes.
        lens: ``"exact"`` (a lens per edited layer), ``"shared"`` (the first edited
            layer's lens for all) or ``"off"`` (no u).
        gain: the entropy normalisation gain.
        lens_final_norm: apply the model's final norm before the unembedding.
        lens_dtype: ``"model"`` or a torch dtype name for the lens's own weight copy.
    """

    name: ClassVar[str] = "probe_lens"
    site: str
    unit_dim: int
    probes: Mapping[int, LayerProbe]
    lens: Literal["exact", "shared", "off"]
    gain: float
    lens_final_norm: bool = True
    lens_dtype: str = "model"

    def __post_init__(self) -> None:
        object.__setattr__(self, "probes", MappingProxyType(dict(self.probes)))

    @property
    def residual_layers(self) -> frozenset[int]:
        edited = sorted(self.probes)
        if self.lens == "exact":
            return frozenset(edited)
        if self.lens == "shared":
            return frozenset(edited[:1])
        return frozenset()


@dataclass(frozen=True, eq=False)
class BoundSignals(SignalPlan):
    """Signals of an estimator that does not describe them as data: the PyTorch-hook
    backend evaluates them through the estimator's own ``bind`` (other backends
    cannot install such a plan and say so)."""

    name: ClassVar[str] = "bound"
    estimator: Any
    targets: EditTargets


# -- strength rules ------------------------------------------------------------------------
@dataclass(frozen=True)
class FixedStrength:
    """Each unit's edit is ``scale * direction`` at every scoped position."""

    name: ClassVar[str] = "fixed"

    @property
    def max_factor(self) -> float:
        """The largest per-token factor the scales are multiplied by (1: none)."""
        return 1.0


@dataclass(frozen=True, eq=False)
class AdaptiveStrength:
    """Each unit's edit is ``scale * w * direction`` with a per-token factor
    ``w = (1 if use_base else 0) + beta * p + (1 - beta) * u`` (terms of switched-off
    signals dropped), ``p`` and ``u`` from :attr:`signals`.
    """

    name: ClassVar[str] = "adaptive"
    signals: SignalPlan
    beta: float
    use_p: bool = True
    use_u: bool = True
    use_base: bool = True

    @property
    def max_factor(self) -> float:
        """The largest per-token factor ``w`` can reach (``p`` and ``u`` lie in [0, 1])."""
        beta = float(self.beta)
        return float(self.use_base) + (beta if self.use_p else 0.0) + ((1.0 - beta) if self.use_u else 0.0)


StrengthRule = FixedStrength | AdaptiveStrength


@dataclass(frozen=True, eq=False)
class EditPlan:
    """Everything needed to edit a model, independent of how edits are installed.

    Attributes:
        site: the edit site's name (a key of the adapter's site table).
        layers: one :class:`LayerPlan` per edited layer, in increasing layer order.
        strength: the strength rule.
    """

    site: str
    layers: tuple[LayerPlan, ...]
    strength: StrengthRule = field(default_factory=FixedStrength)

    def __post_init__(self) -> None:
        layers = tuple(self.layers)
        seen = [p.layer for p in layers]
        if len(set(seen)) != len(seen):
            raise ConfigError(f"an edit plan lists layer(s) twice ({seen}): merge their LayerPlan entries")
        object.__setattr__(self, "layers", tuple(sorted(layers, key=lambda p: p.layer)))
        if not isinstance(self.strength, (FixedStrength, AdaptiveStrength)):
            raise ConfigError(
                f"unknown strength rule {type(self.strength).__name__}: use FixedStrength or AdaptiveStrength"
            )

    @classmethod
    def from_targets(
        cls, targets: EditTargets, scale: torch.Tensor | float, strength: StrengthRule | None = None
    ) -> EditPlan:
        """A plan editing every target with ``scale`` (per target or scalar)."""
        return cls(targets.site, tuple(layer_edits(targets, scale)), strength or FixedStrength())

    @property
    def edited_layers(self) -> list[int]:
        return [p.layer for p in self.layers]

    @property
    def num_targets(self) -> int:
        return sum(int(p.units.numel()) for p in self.layers)

    def peak_edit(self) -> tuple[float, int, int]:
        """``(value, layer, unit)``: the largest magnitude any single value of the edit can
        reach, ``|scale * direction|`` times the strength rule's largest factor, and where.

        Computed on the plan's own tensors (on the host when they are, as fitted plans
        are): call it once per installation, not per forward pass.
        """
        best = (0.0, -1, -1)
        factor = self.strength.max_factor
        for p in self.layers:
            if not p.units.numel():
                continue
            per_unit = (p.directions.float().abs().amax(dim=1) * p.scales.float().abs()) * factor
            k = int(per_unit.argmax())
            value = float(per_unit[k])
            if value > best[0] or value != value:  # NaN wins: it is reported as such
                best = (value, p.layer, int(p.units[k]))
        return best


def plan_values(obj: Any) -> list[Any]:
    """Every leaf value held by a plan (tensors, numbers, strings ...), recursively
    through dataclasses, mappings and sequences: what a backend receives."""
    out: list[Any] = []
    stack = [obj]
    while stack:
        value = stack.pop()
        if is_dataclass(value) and not isinstance(value, type):
            stack.extend(getattr(value, f.name) for f in fields(value))
        elif isinstance(value, Mapping):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, (list, tuple, frozenset, set)):
            stack.extend(value)
        else:
            out.append(value)
    return out


# -- plain form: JSON values + named tensors (safetensors), for shipping a plan elsewhere ---
PLAN_FORMAT = 1


def plan_to_state(plan: EditPlan) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``(meta, tensors)``: the plan as JSON-serialisable values and named CPU tensors
    (what ``safetensors`` stores), e.g. to send it to the worker processes of a serving
    engine without pickle. :func:`plan_from_state` rebuilds it.

    Raises:
        ConfigError: the plan carries :class:`BoundSignals` (an estimator object, not data).
    """
    tensors: dict[str, torch.Tensor] = {}
    layers = []
    for lp in plan.layers:
        for f in ("units", "directions", "scales", "target_index"):
            tensors[f"layer{lp.layer}/{f}"] = getattr(lp, f).detach().cpu().contiguous()
        layers.append(lp.layer)
    meta: dict[str, Any] = {"format": PLAN_FORMAT, "site": plan.site, "layers": layers}
    rule = plan.strength
    if isinstance(rule, FixedStrength):
        meta["strength"] = {"rule": "fixed"}
        return meta, tensors
    sig = rule.signals
    if not isinstance(sig, ProbeLensSignals):
        raise ConfigError(
            f"signals of kind '{sig.name}' ({type(sig).__name__}) are not plain data and cannot be "
            "written out: give the estimator a signal_plan() that returns a data description"
        )
    for layer, probe in sig.probes.items():
        for f in ("units", "weight", "bias"):
            tensors[f"probe{layer}/{f}"] = getattr(probe, f).detach().cpu().contiguous()
    meta["strength"] = {
        "rule": "adaptive", "beta": rule.beta, "use_p": rule.use_p, "use_u": rule.use_u,
        "use_base": rule.use_base,
        "signals": {
            "kind": sig.name, "site": sig.site, "unit_dim": sig.unit_dim, "layers": sorted(sig.probes),
            "lens": sig.lens, "gain": sig.gain, "lens_final_norm": sig.lens_final_norm,
            "lens_dtype": sig.lens_dtype,
        },
    }  # fmt: skip
    return meta, tensors


def plan_from_state(meta: dict[str, Any], tensors: Mapping[str, torch.Tensor]) -> EditPlan:
    """Rebuild a plan written by :func:`plan_to_state`.

    Raises:
        ConfigError: an unknown format, rule or signal kind, or a missing tensor (named).
    """
    if meta.get("format") != PLAN_FORMAT:
        raise ConfigError(f"edit plan format {meta.get('format')!r} is not {PLAN_FORMAT}: write the plan again")

    def get(key: str) -> torch.Tensor:
        if key not in tensors:
            raise ConfigError(f"the edit plan's tensors lack {key!r}: write the plan again")
        return tensors[key]

    layers = tuple(
        LayerPlan(int(layer), *(get(f"layer{layer}/{f}") for f in ("units", "directions", "scales", "target_index")))
        for layer in meta["layers"]
    )
    st = meta["strength"]
    if st["rule"] == "fixed":
        return EditPlan(meta["site"], layers, FixedStrength())
    if st["rule"] != "adaptive":
        raise ConfigError(f"unknown strength rule {st['rule']!r} in the edit plan: use 'fixed' or 'adaptive'")
    sg = st["signals"]
    if sg["kind"] != ProbeLensSignals.name:
        raise ConfigError(f"unknown signal kind {sg['kind']!r} in the edit plan: known is '{ProbeLensSignals.name}'")
    probes = {int(layer): LayerProbe(*(get(f"probe{layer}/{f}") for f in ("units", "weight", "bias"))) for layer in sg["layers"]}
    signals = ProbeLensSignals(
        sg["site"], int(sg["unit_dim"]), probes, sg["lens"], float(sg["gain"]), bool(sg["lens_final_norm"]), sg["lens_dtype"]
    )
    rule = AdaptiveStrength(signals, float(st["beta"]), bool(st["use_p"]), bool(st["use_u"]), bool(st["use_base"]))
    return EditPlan(meta["site"], layers, rule)

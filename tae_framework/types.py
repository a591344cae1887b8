"""Plain data types passed between the roles of the data path.

Shapes use: N texts, L layers, U units per layer at a site (attention heads at the
head-wise site, 1 at the residual site), d unit size (head size, or hidden size),
D = U * d, K selected (layer, unit) targets, T tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from .component import state_dataclass
from .errors import DataError

__all__ = [
    "EditTargets",
    "EstimatorInputs",
    "ModelShape",
    "ProbeInputs",
    "Site",
    "SiteInfo",
    "TextActivations",
    "TokenSequence",
    "check_finite",
]

#: Where activations are read and edits are written.
#: ``heads``: input of the attention output projection, [B, T, H*d];
#: ``residual``: residual stream leaving a decoder layer, [B, T, hidden].
#: These two are the most used; every name of an adapter's site table
#: (:mod:`tae_framework.models.sites`) is accepted where ``Site | str`` is annotated.
Site = Literal["heads", "residual"]


@dataclass(frozen=True)
class ModelShape:
    """Sizes of a causal LM as the framework sees it."""

    family: str
    num_layers: int
    num_heads: int
    head_dim: int
    hidden_size: int
    vocab_size: int

    def site(self, site: Site | str) -> SiteInfo:
        """Layout of ``site`` of the default site table
        (:data:`~tae_framework.models.sites.DEFAULT_SITES`): ``num_heads`` units of
        ``head_dim`` for a head-wise layout, one unit of ``hidden_size`` otherwise. For a
        site a family adapter adds, use :meth:`ModelAdapter.site_info
        <tae_framework.models.base.ModelAdapter.site_info>`.

        Raises:
            ValueError: ``site`` is not in the default table; the message lists its sites.
        """
        from .models.sites import DEFAULT_SITES

        spec = DEFAULT_SITES.get(site) if isinstance(site, str) else None
        if spec is None:
            raise ValueError(
                f"unknown site {site!r}: the default site table knows "
                f"{', '.join(repr(k) for k in DEFAULT_SITES)}"
            )
        if spec.layout == "heads":
            return SiteInfo(site, self.num_heads, self.head_dim)  # type: ignore[arg-type]
        return SiteInfo(site, 1, self.hidden_size)  # type: ignore[arg-type]


@dataclass(frozen=True)
class SiteInfo:
    """Layout of one site: ``num_units`` blocks of ``unit_dim`` values."""

    kind: Site
    num_units: int
    unit_dim: int

    @property
    def width(self) -> int:
        return self.num_units * self.unit_dim


@dataclass
class TextActivations:
    """Token activations of one text, as captured (no padding).

    Attributes:
        index: position of the text in the list given to the source.
        acts: ``[len(layers), T, D]`` activations at the captured site.
        input_ids: ``[T]`` token ids.
        span: ``(start, end)`` token positions of the answer, end exclusive.
        layers: layer indices of the first axis of ``acts``.
    """

    index: int
    acts: torch.Tensor
    input_ids: torch.Tensor
    span: tuple[int, int]
    layers: tuple[int, ...]

    @property
    def answer(self) -> torch.Tensor:
        """``[L, n, D]`` activations of the answer tokens."""
        return self.acts[:, self.span[0] : self.span[1]]

    @property
    def last(self) -> torch.Tensor:
        """``[L, D]`` activation of the last token."""
        return self.acts[:, -1]


@state_dataclass
@dataclass
class EditTargets:
    """What to edit: K (layer, unit) pairs at one site, each with a unit direction.

    ``sigmas`` scale the edit (ITI's spread of projections); ``scores`` is the
    per-(layer, unit) ranking metric the prober computed, kept for plots.
    Head indices are global (never device-local).
    """

    site: str
    layers: torch.Tensor  # [K] long
    units: torch.Tensor  # [K] long
    directions: torch.Tensor  # [K, d] float32
    sigmas: torch.Tensor  # [K] float32
    scores: torch.Tensor  # [L, U] float32
    unit_dim: int

    def __post_init__(self) -> None:
        k = self.layers.numel()
        if self.units.numel() != k or self.directions.shape[0] != k or self.sigmas.numel() != k:
            raise DataError(
                f"EditTargets: layers ({k}), units ({self.units.numel()}), directions "
                f"({self.directions.shape[0]}) and sigmas ({self.sigmas.numel()}) must have one entry per target"
            )
        if self.directions.ndim != 2 or self.directions.shape[1] != self.unit_dim:
            raise DataError(
                f"EditTargets: directions must be [K, {self.unit_dim}], got {tuple(self.directions.shape)}"
            )
        check_finite(self.directions, "edit directions")
        check_finite(self.sigmas, "edit sigmas")

    @property
    def num_targets(self) -> int:
        return int(self.layers.numel())

    def edited_layers(self) -> list[int]:
        return sorted({int(x) for x in self.layers.tolist()})

    def by_layer(self) -> dict[int, torch.Tensor]:
        """Map layer -> indices into the K targets that live in that layer."""
        out: dict[int, torch.Tensor] = {}
        for layer in self.edited_layers():
            out[layer] = torch.nonzero(self.layers == layer).flatten()
        return out

    def with_sigmas(self, sigmas: torch.Tensor) -> EditTargets:
        return EditTargets(
            self.site, self.layers, self.units, self.directions, sigmas.float(), self.scores, self.unit_dim
        )


@dataclass
class ProbeInputs:
    """Everything a :class:`~tae_framework.probers.base.Prober` learns from.

    Attributes:
        features: ``[N, L, U, d]`` aggregated feature of each text.
        labels: ``[N]`` 1 = aligned (true) answer, 0 = misaligned.
        groups: ``[N]`` integer group (question) id of each text.
        train_mask, val_mask: ``[N]`` which texts train the probes / rank the heads.
        val_tokens: ``[M, L, U, d]`` token-level activations of the validation
            answers (for token-level ranking), or ``None``.
        val_token_labels: ``[M]`` each token's answer label.
        seed: random seed.
    """

    features: torch.Tensor
    labels: torch.Tensor
    groups: torch.Tensor
    train_mask: torch.Tensor
    val_mask: torch.Tensor
    val_tokens: torch.Tensor | None = None
    val_token_labels: torch.Tensor | None = None
    seed: int = 42

    @property
    def site_shape(self) -> tuple[int, int, int]:
        return tuple(self.features.shape[1:])  # type: ignore[return-value]


@dataclass
class TokenSequence:
    """One fitting text seen token by token (for per-token estimators).

    ``features[t]`` is the activation at the position BEFORE answer token ``t``
    (so a state predicts whether the next token is misaligned), one row per
    selected target: ``[n, K, d]``. ``None`` for texts whose features were not captured.
    """

    token_ids: torch.Tensor  # [n] answer token ids
    label: int
    group: int
    features: torch.Tensor | None = None


@dataclass
class EstimatorInputs:
    """What a :class:`~tae_framework.estimators.base.MisalignmentEstimator` learns from."""

    targets: EditTargets
    sequences: list[TokenSequence] = field(default_factory=list)
    seed: int = 42


def check_finite(t: torch.Tensor, what: str) -> None:
    """Raise :class:`DataError` if ``t`` holds NaN or inf."""
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).sum())
        raise DataError(
            f"{what} contain {bad} NaN/inf values: check the model dtype (fp16 overflow?) "
            "and the input data"
        )

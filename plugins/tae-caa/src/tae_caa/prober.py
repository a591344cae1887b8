"""CAA's steering vector: the class mean difference of the residual stream."""

from __future__ import annotations

import torch
from pydantic import Field

from tae_framework.config import ComponentConfig
from tae_framework.errors import ConfigError, DataError
from tae_framework.probers.base import Prober
from tae_framework.types import EditTargets, ProbeInputs, check_finite

__all__ = ["MeanDifferenceProber"]


class MeanDifferenceProber(Prober):
    """Mean of aligned minus mean of misaligned features, per layer.

    The target of each chosen layer is its unit mean-difference direction with
    ``sigma`` = the norm of the mean difference, so the ``fixed`` intervener adds
    ``alpha * mean_difference``. Without explicit ``layers`` the layer whose
    validation texts are best separated along its direction (d') is chosen.
    """

    name = "caa"
    required_site = "residual"

    class Config(ComponentConfig):
        layers: list[int] | None = Field(
            default=None, description="Layers to steer; `None` picks the most separating layer."
        )
        num_layers: int = Field(default=1, ge=1, description="How many layers to pick when `layers` is None.")

    def fit(self, inputs: ProbeInputs) -> MeanDifferenceProber:
        check_finite(inputs.features, "CAA features")
        n_layers, n_units, dim = inputs.site_shape
        if n_units != 1:
            raise ConfigError(
                f"the caa prober steers the residual stream (one unit per layer) but the features have "
                f"{n_units} units: set the source's site to 'residual'"
            )
        y = inputs.labels
        fit_mask = inputs.train_mask
        f = inputs.features[:, :, 0]  # [N, L, hidden]
        if len(set(y[fit_mask].tolist())) < 2:
            raise DataError("caa needs aligned and misaligned training examples")
        diff = f[fit_mask & (y == 1)].mean(0) - f[fit_mask & (y == 0)].mean(0)  # [L, hidden]
        norms = diff.norm(dim=1)
        unit = diff / norms[:, None].clamp_min(1e-12)
        proj = torch.einsum("nlh,lh->nl", f[inputs.val_mask], unit)
        yv = y[inputs.val_mask]
        sep = torch.zeros(n_layers)
        if bool((yv == 1).any()) and bool((yv == 0).any()):
            pos, neg = proj[yv == 1], proj[yv == 0]
            pooled = ((pos.var(0, unbiased=False) + neg.var(0, unbiased=False)) / 2).sqrt().clamp_min(1e-6)
            sep = (pos.mean(0) - neg.mean(0)) / pooled
        self.scores_ = sep[:, None]
        if self.config.layers is not None:
            bad = [layer for layer in self.config.layers if not 0 <= layer < n_layers]
            if bad:
                raise ConfigError(f"caa layers {bad} out of range: the model has layers 0..{n_layers - 1}")
            layers = torch.tensor(sorted(set(self.config.layers)))
        else:
            k = min(self.config.num_layers, n_layers)
            layers = torch.sort(torch.argsort(-sep, stable=True)[:k]).values
        self.targets_ = EditTargets(
            "residual", layers, torch.zeros_like(layers), unit[layers], norms[layers], self.scores_, dim
        )
        return self

    def calibrate(self, tuning: torch.Tensor) -> MeanDifferenceProber:
        """CAA's scale is the mean difference itself: nothing to calibrate."""
        self.check_is_fitted()
        return self

"""ITI's controls: random directions on the probed heads, or random heads."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from tae_framework.probers.logistic import LogisticProber
from tae_framework.types import EditTargets, ProbeInputs

__all__ = ["RandomControlProber"]


class RandomControlProber(LogisticProber):
    """The logistic prober with one part replaced by chance, as ITI's control runs.

    ``control="direction"``: the heads ITI selects, each edited along a random unit
    direction; sigma is measured along the probed direction, so every edit has the
    norm ITI's edit would have. ``control="heads"``: K heads drawn at random, each
    with its center-of-mass direction. Both draws use the pipeline seed.
    """

    name = "iti-random"

    class Config(LogisticProber.Config):
        control: Literal["direction", "heads"] = Field(
            default="direction", description="What is random: the directions or the heads."
        )

    def fit(self, inputs: ProbeInputs) -> RandomControlProber:
        super().fit(inputs)
        self.seed_ = int(inputs.seed)
        if self.config.control == "heads":
            g = torch.Generator().manual_seed(inputs.seed)
            n_layers, n_units, dim = inputs.site_shape
            k = self.targets_.num_targets
            flat = torch.randperm(n_layers * n_units, generator=g)[:k].sort().values
            layers, units = flat // n_units, flat % n_units
            self.targets_ = EditTargets(
                self.targets_.site, layers, units, self._center_of_mass(inputs, layers, units),
                torch.ones(k), self.scores_, dim,
            )
        return self

    @staticmethod
    def _center_of_mass(inputs: ProbeInputs, layers: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
        keep = inputs.train_mask | inputs.val_mask
        f = inputs.features[keep][:, layers, units]  # [n, K, d]
        y = inputs.labels[keep]
        d = f[y == 1].mean(0) - f[y == 0].mean(0)
        return d / d.norm(dim=1, keepdim=True).clamp_min(1e-12)

    def calibrate(self, tuning: torch.Tensor) -> RandomControlProber:
        super().calibrate(tuning)  # sigma along the probed (or center-of-mass) directions
        if self.config.control == "direction":
            t = self.targets_
            g = torch.Generator().manual_seed(self.seed_ + 7919)
            rand = torch.randn(t.directions.shape, generator=g)
            rand = rand / rand.norm(dim=1, keepdim=True)
            self.targets_ = EditTargets(t.site, t.layers, t.units, rand, t.sigmas, t.scores, t.unit_dim)
        return self

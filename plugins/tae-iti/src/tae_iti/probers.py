"""ITI's controls: random directions and / or random heads in place of the probed ones.

Three controls are offered as presets (see :mod:`tae_iti.plugin`):

* ``iti-random-direction``: the control ITI publishes, as its code's
  ``--use_random_dir`` runs it: K heads drawn at random, each edited along a random
  unit direction, sigma measured along that random direction.
  ``prober.random_heads=false`` keeps ITI's probed heads instead.
* ``iti-random-matched-norm`` (alias ``iti-random``): ITI's probed heads, random
  unit directions, sigma measured along the probed direction, so every edit has the
  norm ITI's own edit has. Not ITI's published control.
* ``iti-random-heads``: K heads drawn at random, each with its center-of-mass
  direction and sigma along it.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator

from tae_framework.probers.logistic import LogisticProber
from tae_framework.types import EditTargets, ProbeInputs

__all__ = ["RandomControlProber"]

#: Offset of the seed of the random directions from the pipeline seed (so that they do
#: not reuse the stream that drew the random heads).
_DIRECTION_SEED_OFFSET = 7919


class RandomControlProber(LogisticProber):
    """The logistic prober with the heads and / or the directions drawn at random.

    ``random_heads``: edit K heads drawn at random (each with its center-of-mass
    direction) instead of the K best probed heads. ``random_direction``: replace each
    head's direction by a random unit direction (a normalised Gaussian draw, as ITI's
    ``np.random.normal``). ``sigma_along``: with random directions, measure sigma
    along the random direction (``"random"``, ITI's published control) or along the
    probed direction (``"probed"``: the edit keeps ITI's norm). All draws use the
    pipeline seed.
    """

    name = "iti-random"

    class Config(LogisticProber.Config):
        random_direction: bool = Field(
            default=True, description="Edit along a random unit direction per head."
        )
        random_heads: bool = Field(
            default=False, description="Edit K heads drawn at random instead of the probed top K."
        )
        sigma_along: Literal["random", "probed"] = Field(
            default="probed",
            description="With random directions: measure sigma along the random direction "
            "(`random`, ITI's published control) or along the probed direction (`probed`, same "
            "edit norm as ITI).",
        )

        @model_validator(mode="after")
        def _something_is_random(self):
            if not (self.random_direction or self.random_heads):
                raise ValueError(
                    "random_direction and random_heads are both false: that is ITI itself; use "
                    "the `logistic` prober (preset `iti`), or set one of them to true"
                )
            return self

    def fit(self, inputs: ProbeInputs) -> RandomControlProber:
        super().fit(inputs)
        self.seed_ = int(inputs.seed)
        if self.config.random_heads:
            g = torch.Generator().manual_seed(inputs.seed)
            n_layers, n_units, dim = inputs.site_shape
            k = self.targets_.num_targets
            flat = torch.randperm(n_layers * n_units, generator=g)[:k].sort().values
            layers, units = flat // n_units, flat % n_units
            self.targets_ = EditTargets(
                self.targets_.site, layers, units, self._center_of_mass(inputs, layers, units),
                torch.ones(k), self.scores_, dim,
            )
        if self.config.random_direction and self.config.sigma_along == "random":
            # calibrate() then measures sigma along the random directions
            self.targets_ = self._with_random_directions(self.targets_)
        return self

    @staticmethod
    def _center_of_mass(inputs: ProbeInputs, layers: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
        keep = inputs.train_mask | inputs.val_mask
        f = inputs.features[keep][:, layers, units]  # [n, K, d]
        y = inputs.labels[keep]
        d = f[y == 1].mean(0) - f[y == 0].mean(0)
        return d / d.norm(dim=1, keepdim=True).clamp_min(1e-12)

    def _with_random_directions(self, t: EditTargets) -> EditTargets:
        g = torch.Generator().manual_seed(self.seed_ + _DIRECTION_SEED_OFFSET)
        rand = torch.randn(t.directions.shape, generator=g)
        rand = rand / rand.norm(dim=1, keepdim=True)
        return EditTargets(t.site, t.layers, t.units, rand, t.sigmas, t.scores, t.unit_dim)

    def calibrate(self, tuning: torch.Tensor) -> RandomControlProber:
        super().calibrate(tuning)  # sigma along the current directions
        if self.config.random_direction and self.config.sigma_along == "probed":
            self.targets_ = self._with_random_directions(self.targets_)
        return self

"""Entry module of the ``tae-caa`` plugin (cheap to import)."""

from __future__ import annotations

from tae_framework import hookimpl

#: CAA: residual-stream mean difference at the most separating layer, multiplier 1.
CAA_PRESET = {
    "source": {"type": "hf", "config": {"site": "residual"}},
    "aggregator": {"type": "last_token", "config": {}},
    "prober": {"type": "caa", "config": {"layers": None}},
    "estimator": None,
    "intervener": {"type": "fixed", "config": {"alpha": 1.0}},
    "seed": 42,
}


@hookimpl
def tae_register_components(register):
    from .prober import MeanDifferenceProber

    register(MeanDifferenceProber)


@hookimpl
def tae_register_presets(register):
    register("caa", CAA_PRESET)

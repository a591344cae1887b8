"""Entry module of the ``tae-iti`` plugin (cheap to import: no torch work here)."""

from __future__ import annotations

from tae_framework import hookimpl

#: ITI with the reference hyper-parameters for Llama-family 7B models.
ITI_PRESET = {
    "source": {"type": "hf", "config": {}},
    "aggregator": {"type": "last_token", "config": {}},
    "prober": {
        "type": "logistic",
        "config": {"top_k": 48, "rank_on": "features", "direction": "center_of_mass"},
    },
    "estimator": None,
    "intervener": {"type": "fixed", "config": {"alpha": 15.0}},
    "seed": 42,
}

#: ITI's random-direction control: same heads and edit norm, random directions.
ITI_RANDOM_PRESET = {
    **ITI_PRESET,
    "prober": {
        "type": "iti-random",
        "config": {"top_k": 48, "rank_on": "features", "control": "direction"},
    },
}


@hookimpl
def tae_register_components(register):
    from .probers import RandomControlProber

    register(RandomControlProber)


@hookimpl
def tae_register_presets(register):
    register("iti", ITI_PRESET)
    register("iti-random", ITI_RANDOM_PRESET)

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


def _control(**prober: object) -> dict:
    config = {"top_k": 48, "rank_on": "features", "direction": "center_of_mass", **prober}
    return {**ITI_PRESET, "prober": {"type": "iti-random", "config": config}}


#: ITI's published control, as its code's ``--use_random_dir`` runs it: K random heads,
#: a random unit direction per head, sigma measured along that random direction.
ITI_RANDOM_DIRECTION_PRESET = _control(
    random_direction=True, random_heads=True, sigma_along="random"
)

#: ITI's probed heads with random unit directions, sigma measured along the probed
#: direction: each edit has the norm of ITI's edit. Not ITI's published control.
ITI_RANDOM_MATCHED_NORM_PRESET = _control(
    random_direction=True, random_heads=False, sigma_along="probed"
)

#: K random heads, each with its center-of-mass direction (sigma along it).
ITI_RANDOM_HEADS_PRESET = _control(random_direction=False, random_heads=True)

#: Older name of :data:`ITI_RANDOM_MATCHED_NORM_PRESET` (kept as an alias).
ITI_RANDOM_PRESET = ITI_RANDOM_MATCHED_NORM_PRESET


@hookimpl
def tae_register_components(register):
    from .probers import RandomControlProber

    register(RandomControlProber)


@hookimpl
def tae_register_presets(register):
    register("iti", ITI_PRESET)
    register("iti-random-direction", ITI_RANDOM_DIRECTION_PRESET)
    register("iti-random-matched-norm", ITI_RANDOM_MATCHED_NORM_PRESET)
    register("iti-random-heads", ITI_RANDOM_HEADS_PRESET)
    register("iti-random", ITI_RANDOM_PRESET)

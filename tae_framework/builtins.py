"""The built-in plugin: registers the framework's own components, adapters, presets
and tasks through the same hooks third-party plugins use.

Imports happen inside the hook implementations, so importing this module is cheap.
"""

from __future__ import annotations

from .hookspecs import hookimpl

#: The ``tae`` preset: the reference configuration of Token-Aware Editing
#: (K = 16 heads, alpha = 15, beta = 0.5, 100 bins, seed 42).
TAE_PRESET = {
    "source": {"type": "hf", "config": {}},
    "aggregator": {"type": "mig", "config": {"bins": 100, "steps": 1}},
    "prober": {
        "type": "logistic",
        "config": {"top_k": 16, "rank_on": "tokens", "direction": "center_of_mass"},
    },
    "estimator": {"type": "mai", "config": {"lens": "exact"}},
    "intervener": {"type": "mai", "config": {"alpha": 15.0, "beta": 0.5}},
    "seed": 42,
}


@hookimpl
def tae_register_components(register):
    from .aggregators.mig import MIGAggregator
    from .aggregators.simple import LastTokenAggregator, MeanAggregator
    from .estimators.mai import TokenMisalignmentEstimator
    from .evaluation.judges import HFJudge
    from .interveners.adaptive import AdaptiveIntervener
    from .interveners.fixed import FixedIntervener
    from .organism import ORGANISM_COMPONENTS
    from .probers.logistic import LogisticProber
    from .sources.hf import HFActivationSource

    for cls in (
        HFActivationSource,
        MIGAggregator,
        MeanAggregator,
        LastTokenAggregator,
        LogisticProber,
        TokenMisalignmentEstimator,
        AdaptiveIntervener,
        FixedIntervener,
        HFJudge,
        *ORGANISM_COMPONENTS,
    ):
        register(cls)


@hookimpl
def tae_register_model_adapters(register):
    from .models.families import BUILTIN_ADAPTERS

    for cls in BUILTIN_ADAPTERS:
        register(cls)


@hookimpl
def tae_register_presets(register):
    register("tae", TAE_PRESET)
    register(
        "tae-shared-lens",
        {**TAE_PRESET, "estimator": {"type": "mai", "config": {"lens": "shared"}}},
    )


@hookimpl
def tae_register_protocols(register):
    from .evaluation.protocols import BUILTIN_PROTOCOLS

    for cls in BUILTIN_PROTOCOLS:
        register(cls)


@hookimpl
def tae_register_tasks(register):
    from .organism.plugin_tasks import organism_bias_task, organism_toxicity_task
    from .organism.task import organism_task
    from .tasks.truthfulqa import truthfulqa_task

    register("truthfulqa", truthfulqa_task)
    register("organism", organism_task)
    register("organism-toxicity", organism_toxicity_task)  # needs the tae-toxicity plugin when built
    register("organism-bias", organism_bias_task)  # needs the tae-bias plugin when built

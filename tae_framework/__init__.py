"""tae_framework: inference-time alignment of language models by editing activations.

Public API (imported lazily, so ``import tae_framework`` is cheap)::

    from tae_framework import AlignmentPipeline, ContrastDataset, PipelineConfig
    from tae_framework import ActivationSource, GraphAggregator, Prober
    from tae_framework import MisalignmentEstimator, Intervener, ModelAdapter, Judge
    from tae_framework import hookimpl, create_plugin_manager
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time the names load lazily
    from .aggregators.base import GraphAggregator as GraphAggregator
    from .config import ComponentConfig as ComponentConfig
    from .config import ComponentSpec as ComponentSpec
    from .config import PipelineConfig as PipelineConfig
    from .data import ContrastDataset as ContrastDataset
    from .data import ContrastExample as ContrastExample
    from .editing import EditScope as EditScope
    from .editing import EditSession as EditSession
    from .errors import NotFittedError as NotFittedError
    from .errors import TAEError as TAEError
    from .estimators.base import MisalignmentEstimator as MisalignmentEstimator
    from .estimators.base import SignalRuntime as SignalRuntime
    from .evaluation.judge import Judge as Judge
    from .hookspecs import hookimpl as hookimpl
    from .interveners.base import Intervener as Intervener
    from .models.base import ModelAdapter as ModelAdapter
    from .pipeline import AlignmentPipeline as AlignmentPipeline
    from .plugins import create_plugin_manager as create_plugin_manager
    from .plugins import default_registry as default_registry
    from .probers.base import Prober as Prober
    from .sources.base import ActivationSource as ActivationSource
    from .types import EditTargets as EditTargets

_EXPORTS = {
    "AlignmentPipeline": "tae_framework.pipeline",
    "ContrastDataset": "tae_framework.data",
    "ContrastExample": "tae_framework.data",
    "PipelineConfig": "tae_framework.config",
    "ComponentConfig": "tae_framework.config",
    "ComponentSpec": "tae_framework.config",
    "ActivationSource": "tae_framework.sources.base",
    "GraphAggregator": "tae_framework.aggregators.base",
    "Prober": "tae_framework.probers.base",
    "MisalignmentEstimator": "tae_framework.estimators.base",
    "SignalRuntime": "tae_framework.estimators.base",
    "Intervener": "tae_framework.interveners.base",
    "ModelAdapter": "tae_framework.models.base",
    "Judge": "tae_framework.evaluation.judge",
    "EditScope": "tae_framework.editing",
    "EditSession": "tae_framework.editing",
    "EditTargets": "tae_framework.types",
    "hookimpl": "tae_framework.hookspecs",
    "create_plugin_manager": "tae_framework.plugins",
    "default_registry": "tae_framework.plugins",
    "NotFittedError": "tae_framework.errors",
    "TAEError": "tae_framework.errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'tae_framework' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)

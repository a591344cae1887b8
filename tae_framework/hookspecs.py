"""Pluggy hook specifications of tae_framework.

Every hook is prefixed ``tae_``. Plugins implement them with
``tae_framework.hookimpl`` and are discovered through the entry-point group
``tae_framework.plugins``; the built-in components use exactly the same path.
Registration hooks receive a ``register`` callback instead of returning values, so
one plugin can register any number of things and errors name the plugin.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

PROJECT = "tae_framework"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

__all__ = ["PROJECT", "hookimpl", "hookspec"]


@hookspec
def tae_register_components(register: Callable[[type], None]) -> None:
    """Register component classes (sources, aggregators, probers, estimators,
    interveners, judges).

    Called once when a registry is built. ``register(cls)`` routes the class to its
    role by ``issubclass`` and checks that ``cls.name`` is well formed and unique
    within the role.

    Args:
        register: callback taking one component class.
    """


@hookspec
def tae_register_model_adapters(register: Callable[[type], None]) -> None:
    """Register :class:`~tae_framework.models.base.ModelAdapter` classes.

    Called once when a registry is built. Adapters with a higher ``priority`` are
    tried first when a model is resolved.

    Args:
        register: callback taking one adapter class.
    """


@hookspec
def tae_register_presets(register: Callable[[str, dict[str, Any]], None]) -> None:
    """Register named pipeline configs (presets such as ``tae`` or ``iti``).

    Called once when a registry is built.

    Args:
        register: callback ``register(name, config)`` where ``config`` is a dict
            accepted by :class:`~tae_framework.config.PipelineConfig`. It is
            validated when the preset is used.
    """


@hookspec
def tae_register_tasks(register: Callable[[str, Callable[..., Any]], None]) -> None:
    """Register evaluation tasks (TruthfulQA, the organism, toxicity, bias ...).

    Called once when a registry is built.

    Args:
        register: callback ``register(name, factory)``; ``factory(**options)``
            returns a task object (see :mod:`tae_framework.tasks`).
    """


@hookspec
def tae_register_protocols(register: Callable[[type], None]) -> None:
    """Register evaluation protocol classes (multiple choice, generation, side effects,
    or a plugin's own, such as sampled continuations scored per sample).

    Called once when a registry is built. ``register(cls)`` takes a subclass of
    :class:`~tae_framework.evaluation.protocols.Protocol`; its ``name`` is what tasks
    name in their :class:`~tae_framework.evaluation.specs.ProtocolSpec` and must be unique.

    Args:
        register: callback taking one protocol class.
    """

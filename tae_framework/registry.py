"""The registry: every component, adapter, preset and task by role and name."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from .component import NAME_PATTERN, Component
from .config import ComponentSpec, PipelineConfig, format_validation_error
from .errors import ConfigError, PluginError, UnknownComponentError, UnsupportedModelError

__all__ = ["Entry", "Registry", "role_classes"]


def role_classes() -> dict[str, type]:
    """Role name -> abstract base class, in data-path order."""
    from .aggregators.base import GraphAggregator
    from .estimators.base import MisalignmentEstimator
    from .evaluation.judge import Judge
    from .interveners.base import Intervener
    from .models.base import ModelAdapter
    from .probers.base import Prober
    from .sources.base import ActivationSource

    return {
        "source": ActivationSource,
        "aggregator": GraphAggregator,
        "prober": Prober,
        "estimator": MisalignmentEstimator,
        "intervener": Intervener,
        "judge": Judge,
        "adapter": ModelAdapter,
    }


@dataclass(frozen=True)
class Entry:
    """One registered thing and where it came from."""

    name: str
    obj: Any
    plugin: str
    distribution: str
    version: str


class Registry:
    """Components by role and name, plus presets and tasks.

    Built by :func:`tae_framework.plugins.create_plugin_manager`; never a global.
    """

    def __init__(self) -> None:
        self._roles = role_classes()
        self.components: dict[str, dict[str, Entry]] = {r: {} for r in self._roles}
        self.presets: dict[str, Entry] = {}
        self.tasks: dict[str, Entry] = {}
        self.protocols: dict[str, Entry] = {}
        self.failed_plugins: dict[str, str] = {}

    # -- registration --------------------------------------------------------------
    def _check_name(self, name: Any, what: str, plugin: str) -> None:
        if not isinstance(name, str) or not NAME_PATTERN.match(name):
            raise PluginError(
                f"plugin '{plugin}' registered {what} with invalid name {name!r}: names are lower "
                "case letters, digits, '-' and '_', starting with a letter"
            )

    def add_component(self, cls: type, plugin: str, distribution: str, version: str) -> None:
        if not isinstance(cls, type) or not issubclass(cls, Component):
            raise PluginError(
                f"plugin '{plugin}' registered {cls!r}, which is not a Component subclass: "
                "register classes derived from one of the role base classes"
            )
        role = next((r for r, base in self._roles.items() if issubclass(cls, base)), None)
        if role is None:
            raise PluginError(
                f"plugin '{plugin}' registered {cls.__name__}, which derives from no role base class "
                f"({', '.join(b.__name__ for b in self._roles.values())})"
            )
        self._check_name(cls.name, f"{role} {cls.__name__}", plugin)
        existing = self.components[role].get(cls.name)
        if existing is not None and existing.obj is not cls:
            raise PluginError(
                f"plugin '{plugin}' registered {role} '{cls.name}', already provided by plugin "
                f"'{existing.plugin}' ({existing.distribution}); rename one of them"
            )
        self.components[role][cls.name] = Entry(cls.name, cls, plugin, distribution, version)

    def add_preset(self, name: str, config: dict[str, Any], plugin: str, dist: str, version: str) -> None:
        self._check_name(name, "a preset", plugin)
        if name in self.presets:
            raise PluginError(
                f"plugin '{plugin}' registered preset '{name}', already provided by plugin "
                f"'{self.presets[name].plugin}'"
            )
        if not isinstance(config, (dict, PipelineConfig)):
            raise PluginError(f"plugin '{plugin}': preset '{name}' must be a dict or PipelineConfig")
        self.presets[name] = Entry(name, config, plugin, dist, version)

    def add_task(self, name: str, factory: Callable[..., Any], plugin: str, dist: str, version: str) -> None:
        self._check_name(name, "a task", plugin)
        if name in self.tasks:
            raise PluginError(f"plugin '{plugin}' registered task '{name}' twice")
        self.tasks[name] = Entry(name, factory, plugin, dist, version)

    def add_protocol(self, cls: type, plugin: str, dist: str, version: str) -> None:
        from .evaluation.protocols import Protocol

        if not (isinstance(cls, type) and issubclass(cls, Protocol)):
            raise PluginError(
                f"plugin '{plugin}' registered {cls!r} as a protocol; protocols are subclasses of "
                "tae_framework.evaluation.protocols.Protocol"
            )
        name = getattr(cls, "name", "")
        self._check_name(name, "a protocol", plugin)
        if name in self.protocols:
            raise PluginError(
                f"plugin '{plugin}' registered protocol '{name}', already registered by plugin "
                f"'{self.protocols[name].plugin}'"
            )
        self.protocols[name] = Entry(name, cls, plugin, dist, version)

    def protocol(self, name: str) -> type:
        """The protocol class registered as ``name``."""
        if name not in self.protocols:
            known = ", ".join(sorted(self.protocols)) or "none"
            raise UnknownComponentError(
                f"unknown protocol '{name}' (known protocols: {known}); install the plugin that "
                "provides it or fix the name"
            )
        return self.protocols[name].obj

    def remove_plugin(self, plugin: str) -> None:
        """Forget everything a plugin registered (used when its registration fails)."""
        for table in [*self.components.values(), self.presets, self.tasks, self.protocols]:
            for key in [k for k, e in table.items() if e.plugin == plugin]:
                del table[key]

    # -- lookup --------------------------------------------------------------------
    def entry(self, role: str, name: str) -> Entry:
        if role not in self.components:
            raise ConfigError(f"unknown role {role!r}: roles are {', '.join(self.components)}")
        table = self.components[role]
        if name not in table:
            known = ", ".join(sorted(table)) or "none"
            hint = ""
            failed = [p for p in self.failed_plugins if name in p]
            if failed:
                hint = f"; plugin(s) {', '.join(failed)} failed to load"
            raise UnknownComponentError(
                f"no {role} named '{name}' is installed (known {role}s: {known}){hint}; "
                "install the plugin that provides it or fix the name"
            )
        return table[name]

    def get(self, role: str, name: str) -> type:
        return self.entry(role, name).obj

    def build(self, role: str, spec: ComponentSpec | dict[str, Any]) -> Component:
        """Instantiate a component from a ``{type, config}`` spec (second validation step)."""
        if isinstance(spec, dict):
            try:
                spec = ComponentSpec.model_validate(spec)
            except ValidationError as exc:
                raise ConfigError(format_validation_error(exc, f"{role} spec")) from None
        cls = self.get(role, spec.type)
        return cls(spec.config)

    def preset(self, name: str) -> PipelineConfig:
        if name not in self.presets:
            known = ", ".join(sorted(self.presets)) or "none"
            raise UnknownComponentError(
                f"unknown preset '{name}' (known presets: {known}); install the plugin that "
                "provides it or fix the name"
            )
        return PipelineConfig.parse(self.presets[name].obj)

    def task(self, name: str, **options: Any) -> Any:
        if name not in self.tasks:
            known = ", ".join(sorted(self.tasks)) or "none"
            raise UnknownComponentError(f"unknown task '{name}' (known tasks: {known})")
        return self.tasks[name].obj(**options)

    def adapter_for(self, model: Any) -> Component:
        """The highest-priority adapter that matches ``model``."""
        adapters = sorted(
            self.components["adapter"].values(), key=lambda e: (-e.obj.priority, e.name)
        )
        for entry in adapters:
            if entry.obj.matches(model):
                return entry.obj()
        cfg = getattr(model, "config", None)
        reasons = [
            f"  - {e.name}: {e.obj.explain_mismatch(model)}"
            for e in adapters
            if hasattr(e.obj, "explain_mismatch")
        ]
        detail = ("\n" + "\n".join(reasons) + "\n") if reasons else " "
        raise UnsupportedModelError(
            f"no model adapter supports {type(model).__name__} "
            f"(model_type={getattr(cfg, 'model_type', None)!r}); tried: "
            f"{', '.join(e.name for e in adapters) or 'none'}.{detail}Write a ModelAdapter subclass for "
            "it and register it through the tae_register_model_adapters hook (see the docs page "
            "'Add a model family')"
        )

"""Plugin discovery and the plugin manager.

``create_plugin_manager()`` returns a fresh :class:`pluggy.PluginManager` with its
own :class:`~tae_framework.registry.Registry`: the built-in plugins
(:data:`DEFAULT_PLUGINS`) and every entry point of the group
``tae_framework.plugins`` go through the same path. A plugin that fails to import
or to register is reported by name (warning + ``registry.failed_plugins``) and
skipped; this includes a plugin that calls ``sys.exit()`` (only ``KeyboardInterrupt``
is let through).

Environment variables:
    ``TAE_DISABLE_PLUGIN_AUTOLOAD=1``: do not load entry-point plugins (built-ins
    still load). ``TAE_BLOCKED_PLUGINS=a,b``: never load the plugins named ``a``
    and ``b`` (entry-point names, or built-in module names).
"""

from __future__ import annotations

import importlib
import os
import warnings
from importlib import metadata
from typing import Any

import pluggy

from . import hookspecs
from ._version import __version__
from .hookspecs import PROJECT
from .registry import Registry

__all__ = [
    "DEFAULT_PLUGINS",
    "ENTRY_POINT_GROUP",
    "ENV_BLOCKED",
    "ENV_DISABLE_AUTOLOAD",
    "TAEPluginManager",
    "create_plugin_manager",
    "default_registry",
]

ENTRY_POINT_GROUP = "tae_framework.plugins"
ENV_DISABLE_AUTOLOAD = "TAE_DISABLE_PLUGIN_AUTOLOAD"
ENV_BLOCKED = "TAE_BLOCKED_PLUGINS"

#: Built-in plugin modules, registered through the same path as third-party ones.
DEFAULT_PLUGINS: tuple[str, ...] = (
    "tae_framework.builtins",
)

_DIST = "tae-framework"


class PluginWarning(UserWarning):
    """A plugin failed to load and was skipped."""


class TAEPluginManager(pluggy.PluginManager):
    """A pluggy manager that also knows where each plugin came from.

    Attributes:
        failed_plugins: plugin name -> error message, for plugins that were skipped.
        provenance: plugin name -> (distribution, version).
    """

    def __init__(self) -> None:
        super().__init__(PROJECT)
        self.add_hookspecs(hookspecs)
        self.failed_plugins: dict[str, str] = {}
        self.provenance: dict[str, tuple[str, str]] = {}
        self._registry: Registry | None = None

    def _fail(self, name: str, exc: BaseException, stage: str) -> None:
        msg = f"{type(exc).__name__}: {exc}"
        self.failed_plugins[name] = f"{stage}: {msg}"
        warnings.warn(
            f"tae_framework plugin '{name}' failed to {stage} and was skipped ({msg})",
            PluginWarning,
            stacklevel=3,
        )

    def register_plugin(self, plugin: Any, name: str, distribution: str, version: str) -> None:
        """Register a plugin object and remember its distribution."""
        if self.is_blocked(name):
            return
        self.register(plugin, name=name)
        self.provenance[name] = (distribution, version)

    def load_defaults(self, blocked: set[str]) -> None:
        for modname in DEFAULT_PLUGINS:
            if modname in blocked:
                self.set_blocked(modname)
                continue
            try:
                module = importlib.import_module(modname)
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # noqa: BLE001 - SystemExit too: report and continue
                self._fail(modname, exc, "import")
                continue
            self.register_plugin(module, modname, _DIST, __version__)

    def load_entry_points(self, blocked: set[str]) -> None:
        for ep in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            if ep.name in blocked:
                self.set_blocked(ep.name)
                continue
            if self.has_plugin(ep.name) or self.is_blocked(ep.name):
                continue
            try:
                plugin = ep.load()
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # noqa: BLE001 - a plugin calling sys.exit() must not end the process
                self._fail(ep.name, exc, "import")
                continue
            dist = ep.dist.name if ep.dist is not None else "unknown"
            version = ep.dist.version if ep.dist is not None else "unknown"
            try:
                self.register_plugin(plugin, ep.name, dist, version)
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # noqa: BLE001
                self._fail(ep.name, exc, "register")

    def check_plugins(self) -> None:
        """Run pluggy's ``check_pending``; a plugin with a misspelled ``tae_`` hook
        implementation is reported by name, unregistered and skipped."""
        while True:
            try:
                self.check_pending()
                return
            except pluggy.PluginValidationError as exc:
                name = self.get_name(exc.plugin) or repr(exc.plugin)
                self.unregister(exc.plugin)
                self._fail(name, exc, "validate (misspelled hook implementation?)")

    @property
    def registry(self) -> Registry:
        """The registry filled by calling every registration hook once (lazily)."""
        if self._registry is None:
            self._registry = self.build_registry()
        return self._registry

    def build_registry(self) -> Registry:
        reg = Registry()
        calls = [
            ("tae_register_components", lambda n, d, v: (lambda cls: reg.add_component(cls, n, d, v))),
            ("tae_register_model_adapters", lambda n, d, v: (lambda cls: reg.add_component(cls, n, d, v))),
            ("tae_register_presets", lambda n, d, v: (lambda name, cfg: reg.add_preset(name, cfg, n, d, v))),
            ("tae_register_tasks", lambda n, d, v: (lambda name, f: reg.add_task(name, f, n, d, v))),
            ("tae_register_protocols", lambda n, d, v: (lambda cls: reg.add_protocol(cls, n, d, v))),
        ]
        failed: set[str] = set()
        for hook_name, make_cb in calls:
            caller = getattr(self.hook, hook_name)
            for impl in caller.get_hookimpls():
                name = impl.plugin_name
                if name in failed:
                    continue
                dist, version = self.provenance.get(name, ("unknown", "unknown"))
                try:
                    impl.function(register=make_cb(name, dist, version))
                except KeyboardInterrupt:
                    raise
                except BaseException as exc:  # noqa: BLE001 - SystemExit in a hook too
                    failed.add(name)
                    reg.remove_plugin(name)
                    self._fail(name, exc, "register")
        reg.failed_plugins = dict(self.failed_plugins)
        return reg


def _blocked_from_env() -> set[str]:
    raw = os.environ.get(ENV_BLOCKED, "")
    return {p.strip() for p in raw.split(",") if p.strip()}


def create_plugin_manager(
    autoload: bool | None = None, blocked: set[str] | list[str] | None = None
) -> TAEPluginManager:
    """Return a fresh plugin manager with built-ins and (unless disabled) entry points.

    Args:
        autoload: load entry-point plugins; default: true unless the environment
            variable ``TAE_DISABLE_PLUGIN_AUTOLOAD`` is set to a non-empty value.
        blocked: plugin names never to load, added to ``TAE_BLOCKED_PLUGINS``.
    """
    if autoload is None:
        autoload = os.environ.get(ENV_DISABLE_AUTOLOAD, "") in ("", "0", "false", "False")
    block = _blocked_from_env() | set(blocked or ())
    pm = TAEPluginManager()
    pm.load_defaults(block)
    if autoload:
        pm.load_entry_points(block)
    pm.check_plugins()
    return pm


_DEFAULT: dict[str, Registry] = {}


def default_registry(refresh: bool = False) -> Registry:
    """The registry used when none is passed explicitly.

    Built on first use from :func:`create_plugin_manager` and reused; pass
    ``refresh=True`` after installing or blocking plugins in a running process.
    Code that needs isolation (tests, two configurations side by side) should create
    its own manager and pass ``registry=pm.registry``.
    """
    if refresh or "registry" not in _DEFAULT:
        _DEFAULT["registry"] = create_plugin_manager().registry
    return _DEFAULT["registry"]

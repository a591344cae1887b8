"""The built-in plugin: registers the framework's own components, adapters, presets
and tasks through the same hooks third-party plugins use.

Imports happen inside the hook implementations, so importing this module is cheap.
"""

from __future__ import annotations

from .hookspecs import hookimpl


@hookimpl
def tae_register_components(register):
    pass


@hookimpl
def tae_register_model_adapters(register):
    pass


@hookimpl
def tae_register_presets(register):
    pass


@hookimpl
def tae_register_tasks(register):
    pass

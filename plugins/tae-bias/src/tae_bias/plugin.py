"""Entry module of the ``tae-bias`` plugin (cheap to import: the task, the protocol
and the data code load only when a registry is built)."""

from __future__ import annotations

from tae_framework import hookimpl


@hookimpl
def tae_register_tasks(register):
    from .task import BBQTask

    register("bbq", BBQTask.load)


@hookimpl
def tae_register_protocols(register):
    from .task import BBQChoice

    register(BBQChoice)

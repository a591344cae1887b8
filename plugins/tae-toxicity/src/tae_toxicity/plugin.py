"""Entry module of the ``tae-toxicity`` plugin (cheap to import: no torch work here)."""

from __future__ import annotations

from tae_framework import hookimpl


@hookimpl
def tae_register_components(register):
    from .judges import ClassifierJudge, LexiconJudge

    register(ClassifierJudge)
    register(LexiconJudge)


@hookimpl
def tae_register_protocols(register):
    from .protocol import ToxicitySampling

    register(ToxicitySampling)


@hookimpl
def tae_register_tasks(register):
    from .task import toxicity_task

    register("toxicity", toxicity_task)

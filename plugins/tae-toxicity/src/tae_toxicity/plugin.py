"""Entry module of the ``tae-toxicity`` plugin (cheap to import: no torch work here)."""

from __future__ import annotations

from tae_framework import hookimpl


@hookimpl
def tae_register_components(register):
    from .judges import ClassifierJudge, LexiconJudge

    register(ClassifierJudge)
    register(LexiconJudge)

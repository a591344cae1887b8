"""The editing engine, under the names it has always had.

Edits are described by :mod:`tae_framework.plan` (``EditPlan``, ``LayerPlan`` a.k.a.
``LayerEdit``, ``EditScope``) and installed by a backend; the PyTorch-hook backend,
:mod:`tae_framework.backends.torch_hooks`, provides :class:`EditSession`. This module
re-exports both so ``from tae_framework.editing import EditSession, layer_edits`` keeps
working.

Scopes (:class:`EditScope`) say which positions of each forward pass are edited:

* ``last``: only the last position of every forward pass. With left padding and a KV
  cache this is the last prompt token on the prefill pass and then each new token:
  the generation setting.
* ``span``: the positions of a ``[B, T]`` boolean mask given with
  :meth:`EditSession.set_span` before the forward (e.g. answer tokens when scoring).
* ``all``: every position (CE / KL on plain text).
"""

from __future__ import annotations

from .backends.base import ForwardContext
from .backends.torch_hooks import EditSession, Modulator, count_taps, install_plan, is_installed
from .plan import EditPlan, EditScope, LayerEdit, LayerPlan, layer_edits

__all__ = [
    "EditPlan",
    "EditScope",
    "EditSession",
    "ForwardContext",
    "LayerEdit",
    "LayerPlan",
    "Modulator",
    "count_taps",
    "install_plan",
    "is_installed",
    "layer_edits",
]

"""Captured activations kept in memory and served again to later capture calls.

Fitting a pipeline captures the same texts more than once: all layers of every text
first, then a few layers of the training texts, and the last token of the prompts
(prefixes of those texts). A causal model's activations at a token depend only on the
tokens up to it, so all of these are rows of the first capture. :class:`CaptureMemo`
keeps the activations of a capture call whose total size fits a budget and answers a
later request for the same token ids, or for a prefix of them, at the same or fewer
layers, with a copy of the kept rows instead of a forward pass.

What is served is what a forward pass of the same model object would give, up to
floating-point rounding (a batch of other texts or other lengths may round differently
on some kernels; on the CPU kernels measured here the values are bitwise equal). The
kept activations are tied to:

* the model object (a weak reference: nothing is served to another model);
* a digest of every byte of its weights, recomputed at every capture call that could
  keep or serve something (so ``param.data[...]`` edits, which PyTorch's version
  counters do not see, are caught too);
* the forward hooks installed on its modules (an edit session changes the activations
  without changing a weight) and its training flag;
* the adapter, site, output dtype and device.

A model changed in any other way (its ``forward`` replaced, its attention
implementation switched) needs :meth:`CaptureMemo.clear` or ``reuse_mb=0``.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.modules import module as _module

from .weights_digest import full_weights_digest

__all__ = ["CaptureMemo"]


def _hooks_state(model: nn.Module) -> tuple:
    """The ids of every forward hook on the model's modules and the global ones (ids
    grow with every registration, so a removed and re-added hook changes this too)."""
    ids: list[int] = []
    for m in model.modules():
        ids.extend(m._forward_hooks)
        ids.extend(m._forward_pre_hooks)
    glob = (tuple(_module._global_forward_hooks), tuple(_module._global_forward_pre_hooks))
    return tuple(ids), glob


@dataclass
class _Kept:
    key: tuple
    ids: tuple[int, ...]
    layers: tuple[int, ...]
    rows: list[torch.Tensor]  # one [T, D] tensor per layer, not seen by any caller


@dataclass
class _Call:
    key: tuple
    model: weakref.ref
    entries: list[_Kept] = field(default_factory=list)
    nbytes: int = 0


#: Fewer tokens than this in a capture call: it is not kept (re-hashing the weights at a
#: later call costs about as much as a forward pass over a few hundred tokens on a CPU).
MIN_TOKENS = 256


class CaptureMemo:
    """Activations of recent capture calls, up to a memory budget (see the module doc).

    A capture call is kept whole or not at all: when it has fewer than
    :data:`MIN_TOKENS` tokens or its size exceeds the budget nothing of it is kept; older
    calls are dropped, oldest first, to make room for a new one. The weights are hashed
    only for a call that is kept or that asks for token ids something kept could serve.
    """

    def __init__(self) -> None:
        self._calls: list[_Call] = []
        self._by_ids: dict[tuple[int, ...], list[_Kept]] = {}
        self._prefix: dict[int, dict[tuple[int, ...], list[_Kept]]] = {}
        self._current: _Call | None = None

    @property
    def nbytes(self) -> int:
        return sum(c.nbytes for c in self._calls)

    def __len__(self) -> int:
        return sum(len(c.entries) for c in self._calls)

    def clear(self) -> None:
        """Forget every kept activation."""
        self._calls.clear()
        self._current = None
        self._reindex()

    def begin(
        self, model: nn.Module, context: tuple, ids: list[list[int]], bytes_per_token: int, budget_bytes: int
    ) -> tuple | None:
        """Start a capture call of the texts ``ids``. Returns the key to serve and keep
        under, or ``None`` when nothing can be served and the call is not kept."""
        self._current = None
        alive = [c for c in self._calls if c.model() is not None]
        if len(alive) != len(self._calls):
            self._calls = alive
            self._reindex()
        tokens = sum(len(x) for x in ids)
        expected = tokens * bytes_per_token
        fits = tokens >= MIN_TOKENS and 0 < expected <= budget_bytes
        servable = bool(self._calls) and any(self._candidates(tuple(x)) for x in ids)
        if not (fits or servable):
            return None
        key = (id(model), full_weights_digest(model, refresh=True), _hooks_state(model), model.training, *context)
        if fits:
            if self.nbytes + expected > budget_bytes:
                while self._calls and self.nbytes + expected > budget_bytes:
                    self._calls.pop(0)
                self._reindex()
            self._current = _Call(key, weakref.ref(model))
            self._calls.append(self._current)
        return key

    def _reindex(self) -> None:
        self._by_ids = {}
        for c in self._calls:
            for e in c.entries:
                self._by_ids.setdefault(e.ids, []).append(e)
        self._prefix.clear()

    def _by_prefix(self, n: int) -> dict[tuple[int, ...], list[_Kept]]:
        index = self._prefix.get(n)
        if index is None:
            index = {}
            for c in self._calls:
                for e in c.entries:
                    if len(e.ids) > n:
                        index.setdefault(e.ids[:n], []).append(e)
            self._prefix[n] = index
        return index

    def _candidates(self, ids: tuple[int, ...]) -> list[_Kept]:
        return self._by_ids.get(ids, []) + self._by_prefix(len(ids)).get(ids, [])

    def keep(self, key: tuple, ids: list[int], layers: tuple[int, ...], rows: list[torch.Tensor]) -> None:
        """Keep one text's activations, one ``[T, D]`` tensor per layer (if this call is
        kept). The caller hands them over: nothing else may write to them."""
        call = self._current
        if call is None or call.key != key:
            return
        entry = _Kept(key, tuple(ids), tuple(layers), list(rows))
        call.entries.append(entry)
        call.nbytes += sum(t.numel() * t.element_size() for t in entry.rows)
        self._by_ids.setdefault(entry.ids, []).append(entry)
        for n in [n for n in self._prefix if n < len(entry.ids)]:
            del self._prefix[n]

    def find(self, key: tuple, ids: list[int], layers: tuple[int, ...]) -> torch.Tensor | None:
        """A fresh ``[len(layers), len(ids), D]`` tensor of kept rows, or ``None``."""
        want = tuple(ids)
        wanted = set(layers)
        for entry in self._candidates(want):
            if entry.key == key and wanted <= set(entry.layers):
                return torch.stack([entry.rows[entry.layers.index(layer)][: len(want)] for layer in layers])
        return None

    def describe(self) -> dict[str, Any]:
        return {"calls": len(self._calls), "texts": len(self), "bytes": self.nbytes}

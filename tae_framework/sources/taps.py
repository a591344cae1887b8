"""Forward taps that copy what enters or leaves a set of modules during a forward pass."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .. import distributed
from ..errors import ConfigError, TAEError
from ..models.sites import DEFAULT_SITES, SiteSpec, register_tap

__all__ = ["SiteTaps"]


class AllCaptured(Exception):
    """Raised by :class:`SiteTaps` with ``stop=True`` once every tap has fired: the rest of
    the forward pass is not needed. Caught by the caller of the forward pass."""


class SiteTaps(contextlib.AbstractContextManager):
    """Copy what enters or leaves a set of modules: the tensor of one edit site.

    A context manager: the PyTorch handles exist only inside the ``with`` block and
    are removed on exit, also when the forward raises. The taps never modify what
    they see; each copy is made on the device of the tensor it copies.

    Args:
        modules: one module per captured layer, in the order of ``layers``.
        site: the site's table entry (:class:`~tae_framework.models.sites.SiteSpec`,
            from :meth:`ModelAdapter.site_spec
            <tae_framework.models.base.ModelAdapter.site_spec>`), or the name of a site
            of the default table. A site whose ``tensor`` is ``"input"`` taps each
            module's first input (pre-forward), one whose ``tensor`` is ``"output"``
            taps its output (element 0 of a tuple output).
        dtype: dtype of the copies.
        full_width: the whole site width of a tensor-parallel model (each rank sees a
            slice, gathered before copying).
        stop: raise :class:`AllCaptured` as soon as every tap has fired, so the caller
            can skip the rest of the forward pass (the later modules, the final norm and
            the vocabulary projection). Only for callers that discard the model's output
            and catch the exception; the copies are the same as without it.
    """

    def __init__(
        self, modules: Sequence[nn.Module], site: SiteSpec | str, dtype: torch.dtype,
        full_width: int | None = None, stop: bool = False,
    ):
        if not isinstance(site, SiteSpec):
            spec = DEFAULT_SITES.get(site) if isinstance(site, str) else None
            if spec is None:
                raise ConfigError(
                    f"unknown site {site!r}: the default table knows the sites "
                    f"{', '.join(repr(k) for k in DEFAULT_SITES)}; for a site an adapter adds, "
                    "pass its entry, adapter.site_spec(name)"
                )
            site = spec
        self.modules = list(modules)
        #: the site's table entry
        self.spec = site
        #: the site's name (in messages)
        self.site = site.name
        self.dtype = dtype
        #: the whole site width of a tensor-parallel model (each rank sees a slice)
        self.full_width = full_width
        self.stop = stop
        self.captured: list[torch.Tensor | None] = [None] * len(self.modules)
        self._pending = len(self.modules)
        self._handles: list[Any] = []

    def _store(self, slot: int, value: Any) -> None:
        if isinstance(value, (tuple, list)):
            value = value[0] if value else None
        if not isinstance(value, torch.Tensor):
            raise TAEError(
                f"the {self.site} tap of captured layer #{slot} received {type(value).__name__}, "
                "not a tensor: the model adapter points at the wrong module"
            )
        if self.full_width is not None:
            value = distributed.gather_site(value, self.full_width)
        if self.captured[slot] is None:
            self._pending -= 1
        self.captured[slot] = value.detach().to(dtype=self.dtype, copy=True)
        if self.stop and self._pending == 0:
            raise AllCaptured

    def _pre_tap(self, slot: int):
        def tap(module, args, kwargs):
            self._store(slot, args[0] if args else next(iter(kwargs.values()), None))

        return tap

    def _post_tap(self, slot: int):
        def tap(module, args, output):
            self._store(slot, output)

        return tap

    def __enter__(self):
        try:
            for slot, module in enumerate(self.modules):
                self._handles.append(
                    register_tap(module, self.spec, self._pre_tap(slot), self._post_tap(slot))
                )
        except BaseException:
            self.remove()
            raise
        return self

    def remove(self) -> None:
        while self._handles:
            self._handles.pop().remove()

    def __exit__(self, *exc: object) -> None:
        self.remove()


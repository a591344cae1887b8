"""The ``ModelAdapter`` role: find the editable sites of a causal LM architecture."""

from __future__ import annotations

import hashlib
import json
from abc import abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from ..component import Component
from ..errors import ConfigError, ModelMismatchError, UnsupportedModelError
from ..types import ModelShape, Site, SiteInfo
from .sites import DEFAULT_SITES, SiteSpec

__all__ = ["ModelAdapter", "check_fingerprint", "model_fingerprint"]


class ModelAdapter(Component):
    """Maps one architecture family to its sites.

    Sites: the decoder layers, the module whose INPUT is the head-wise activation
    (``o_proj`` in Llama-like models), the residual stream entering and leaving each
    layer (input / output of the decoder layer), the final norm and the unembedding.
    Adapters are stateless; :meth:`matches` decides whether an adapter handles a model.

    The edit sites are one table, :attr:`sites` (name -> :class:`~tae_framework.models.sites.SiteSpec`):
    each entry names the adapter method locating its module and whether the site is
    that module's input or output. Capture and editing resolve sites only through
    :meth:`site_spec`, :meth:`site_module` and :meth:`site_info`.

    Example:
        An adapter for a custom model whose layers live in ``model.blocks``::

            >>> from tae_framework.models.base import ModelAdapter
            >>> from tae_framework.types import ModelShape
            >>> class BlocksAdapter(ModelAdapter):
            ...     name = "blocks"
            ...     @classmethod
            ...     def matches(cls, model):
            ...         return hasattr(model, "blocks")
            ...     def layers(self, model):
            ...         return list(model.blocks)
            ...     def head_module(self, model, layer):
            ...         return model.blocks[layer].attn.out
            ...     def final_norm(self, model):
            ...         return model.norm
            ...     def unembedding(self, model):
            ...         return model.head
            ...     def shape(self, model):
            ...         c = model.config
            ...         return ModelShape("blocks", c.n_layers, c.n_heads, c.d // c.n_heads, c.d, c.vocab)
    """

    role: ClassVar[str] = "adapter"
    #: Higher priority adapters are tried first (family adapters above the generic one).
    priority: ClassVar[int] = 0
    #: The edit sites this adapter can locate: name -> where and which tensor.
    sites: ClassVar[Mapping[str, SiteSpec]] = DEFAULT_SITES

    @classmethod
    @abstractmethod
    def matches(cls, model: nn.Module) -> bool:
        """Whether this adapter can resolve ``model``."""

    @abstractmethod
    def layers(self, model: nn.Module) -> list[nn.Module]:
        """The decoder layers, in order."""

    @abstractmethod
    def head_module(self, model: nn.Module, layer: int) -> nn.Module:
        """The module whose first input is the head-wise activation ``[B, T, H*d]``."""

    @abstractmethod
    def final_norm(self, model: nn.Module) -> nn.Module | None:
        """The final normalisation before the unembedding (``None`` if absent)."""

    @abstractmethod
    def unembedding(self, model: nn.Module) -> nn.Module:
        """The output projection to the vocabulary (``lm_head``)."""

    @abstractmethod
    def shape(self, model: nn.Module) -> ModelShape:
        """Sizes of the model."""

    def layer_module(self, model: nn.Module, layer: int) -> nn.Module:
        """Decoder layer ``layer`` (its input / output is the residual stream)."""
        layers = self.layers(model)
        if not 0 <= layer < len(layers):
            raise IndexError(f"layer {layer} is out of range: valid layers are 0..{len(layers) - 1}")
        return layers[layer]

    def mlp_module(self, model: nn.Module, layer: int) -> nn.Module:
        """The MLP (feed-forward block) of decoder layer ``layer``; adapters that know it override this."""
        raise UnsupportedModelError(
            f"adapter '{self.name}' does not locate MLP modules, so the 'mlp_out' site is not "
            "available: override ModelAdapter.mlp_module in the adapter"
        )

    def site_spec(self, site: str) -> SiteSpec:
        """The table entry of ``site``.

        Raises:
            ConfigError: ``site`` is not in :attr:`sites`; the message lists the known sites.
        """
        spec = self.sites.get(site) if isinstance(site, str) else None
        if spec is None:
            raise ConfigError(
                f"unknown site {site!r}: adapter '{self.name}' knows the sites "
                f"{', '.join(repr(k) for k in self.sites)}"
            )
        return spec

    def site_module(self, model: nn.Module, layer: int, site: Site | str) -> nn.Module:
        """The module holding ``site`` in layer ``layer`` (its input or output, per :meth:`site_spec`)."""
        return getattr(self, self.site_spec(site).locate)(model, layer)

    def site_info(self, model: nn.Module, site: Site | str) -> SiteInfo:
        """Layout of ``site`` on ``model``: ``num_units`` blocks of ``unit_dim`` values."""
        spec = self.site_spec(site)
        shape = self.shape(model)
        if spec.layout == "heads":
            return SiteInfo(site, shape.num_heads, shape.head_dim)  # type: ignore[arg-type]
        return SiteInfo(site, 1, shape.hidden_size)  # type: ignore[arg-type]

    def resolve_layers(self, model: nn.Module, layers: Any = None) -> list[int]:
        """Validate layer indices against the model; ``None`` means every layer.

        Raises:
            ConfigError: an index is not an int, is out of ``[0, num_layers)``, or
                repeats; the message names the valid range.
        """
        n = len(self.layers(model))
        if layers is None:
            return list(range(n))
        if isinstance(layers, (int, str, bytes)) or not hasattr(layers, "__iter__"):
            raise ConfigError(f"layers must be a list of layer indices (or None for all), got {layers!r}")
        out: list[int] = []
        for layer in layers:
            if isinstance(layer, torch.Tensor) and layer.numel() == 1:
                layer = layer.item()
            if isinstance(layer, bool) or not hasattr(layer, "__index__"):
                raise ConfigError(f"layer index {layer!r} is not an integer; valid layers are 0..{n - 1}")
            idx = layer.__index__()
            if not 0 <= idx < n:
                raise ConfigError(
                    f"layer {idx} is out of range: this model has {n} layers, valid indices are 0..{n - 1}"
                )
            if idx in out:
                raise ConfigError(f"layer {idx} is listed twice in layers={list(layers)!r}")
            out.append(idx)
        if not out:
            raise ConfigError(f"layers is empty: pass None for all layers or indices in 0..{n - 1}")
        return out

    def fingerprint(self, model: nn.Module) -> dict[str, Any]:
        """Architecture fingerprint stored with fitted pipelines."""
        return model_fingerprint(model, self)


def model_fingerprint(model: nn.Module, adapter: ModelAdapter) -> dict[str, Any]:
    """A JSON description of a model's architecture and shapes (not its weights)."""
    s = adapter.shape(model)
    cfg = getattr(model, "config", None)
    return {
        "model_type": getattr(cfg, "model_type", type(model).__name__),
        "name_or_path": getattr(cfg, "_name_or_path", "") or "",
        "adapter": adapter.name,
        "num_layers": s.num_layers,
        "num_heads": s.num_heads,
        "head_dim": s.head_dim,
        "hidden_size": s.hidden_size,
        "vocab_size": s.vocab_size,
    }


def weights_digest(model: nn.Module, max_values: int = 4096) -> str:
    """A cheap digest of a model's weights (a strided sample of every parameter)."""
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        h.update(name.encode())
        h.update(str(tuple(p.shape)).encode())
        if p.device.type == "meta":
            continue
        flat = p.detach().reshape(-1)
        step = max(1, flat.numel() // max_values)
        h.update(flat[::step].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


_COMPARED = ("model_type", "num_layers", "num_heads", "head_dim", "hidden_size", "vocab_size")


def check_fingerprint(saved: dict[str, Any], current: dict[str, Any]) -> None:
    """Raise :class:`ModelMismatchError` naming every field that differs."""
    diffs = [
        f"{k}: fitted on {saved.get(k)!r}, this model has {current.get(k)!r}"
        for k in _COMPARED
        if saved.get(k) != current.get(k)
    ]
    if diffs:
        raise ModelMismatchError(
            "this pipeline was fitted on a different model ("
            + json.dumps(saved.get("name_or_path") or saved.get("model_type"))
            + "):\n  - "
            + "\n  - ".join(diffs)
            + "\nrefit the pipeline on this model"
        )

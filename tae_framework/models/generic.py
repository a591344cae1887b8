"""The generic adapter: resolves the sites of a Hugging Face causal LM by name.

Resolution rules (each step names what it could not find):

1. The model must carry a ``config`` (its text config for multimodal wrappers) with
   ``num_hidden_layers`` and ``num_attention_heads``, and, when it is a transformers
   model, be able to generate (``can_generate()``); masked LMs are rejected.
2. Decoder layers: the ``nn.ModuleList`` of exactly ``num_hidden_layers`` modules,
   looked up at the usual paths (``model.layers``, ``transformer.h``,
   ``gpt_neox.layers``, ``model.decoder.layers`` ...), otherwise the only module
   list of that length whose first element has an attention module.
3. Attention module of every layer: the first child among ``self_attn``, ``attn``,
   ``attention``, ``self_attention``; its output projection: the first child among
   ``o_proj``, ``c_proj``, ``dense``, ``out_proj``. The head-wise site is that
   projection's INPUT ``[B, T, H*d]``.
4. Shape: ``H = num_attention_heads``; ``d = config.head_dim`` when the config has
   one, else ``hidden_size // H``. ``H*d`` is checked against the input width of every
   layer's projection (read from the module's shape attributes only, never from
   weight values, so meta/offloaded weights are fine); a mismatch is an error.
5. Final norm: the first child of the layers' parent module among ``norm``,
   ``ln_f``, ``final_layer_norm``, ``final_layernorm``, ``norm_f``, ``final_norm``
   (``None`` when there is none); unembedding: ``model.get_output_embeddings()``.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn

from ..errors import UnsupportedModelError
from ..types import ModelShape
from .base import ModelAdapter

__all__ = ["GenericAdapter", "projection_in_features", "text_config"]

_HINT = (
    "write a ModelAdapter subclass for this architecture and register it through the "
    "tae_register_model_adapters hook (see the docs page 'Add a model family')"
)


class _NotResolved(Exception):
    """Internal: a site could not be resolved; the message says which."""


def text_config(model: nn.Module) -> Any:
    """The (text) config of ``model``, or ``None`` when it has none."""
    cfg = getattr(model, "config", None)
    if cfg is None:
        return None
    get_text = getattr(cfg, "get_text_config", None)
    if callable(get_text):
        try:
            return get_text()
        except Exception:  # noqa: BLE001 - fall back to the top-level config
            return cfg
    return cfg


def projection_in_features(module: nn.Module) -> int | None:
    """Input width of a linear-like module from its shape attributes (never its values).

    Handles ``nn.Linear`` (and subclasses, quantised linears with ``in_features``)
    and the GPT-2 style ``Conv1D`` whose weight is ``[in, out]``.
    """
    value = getattr(module, "in_features", None)
    if isinstance(value, int):
        return value
    if type(module).__name__ == "Conv1D":
        nx = getattr(module, "nx", None)
        if isinstance(nx, int):
            return nx
        weight = getattr(module, "weight", None)
        if weight is not None and weight.ndim == 2:
            return int(weight.shape[0])
    weight = getattr(module, "weight", None)
    if isinstance(module, nn.Linear) and weight is not None and weight.ndim == 2:
        return int(weight.shape[1])
    return None


def _get_path(root: nn.Module, path: str) -> Any:
    obj: Any = root
    for part in path.split("."):
        if not part:
            continue
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _child(module: nn.Module, name: str) -> nn.Module | None:
    child = module._modules.get(name)
    return child if isinstance(child, nn.Module) else None


def _int_attr(cfg: Any, name: str) -> int | None:
    try:
        value = getattr(cfg, name, None)
    except Exception:  # noqa: BLE001 - properties of odd configs may raise
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class _Layers:
    path: str
    modules: nn.Module  # ModuleList or Sequential


class GenericAdapter(ModelAdapter):
    """Resolves any Hugging Face causal LM from its config and module names.

    Family adapters subclass it and narrow the search lists below (class
    attributes), so that each family resolves along one known path.
    """

    name: ClassVar[str] = "generic"
    priority: ClassVar[int] = 0

    #: Where the decoder layers are looked up first (dotted attribute paths).
    layer_paths: ClassVar[tuple[str, ...]] = (
        "model.layers",
        "model.decoder.layers",
        "transformer.h",
        "gpt_neox.layers",
        "transformer.blocks",
        "transformer.layers",
        "model.language_model.layers",
        "language_model.model.layers",
        "model.transformer.h",
        "decoder.layers",
        "layers",
        "h",
        "blocks",
    )
    #: Search every module list of the right length when no known path matches.
    search_layers: ClassVar[bool] = True
    #: Attention module names inside a decoder layer, in order of preference.
    attention_names: ClassVar[tuple[str, ...]] = ("self_attn", "attn", "attention", "self_attention")
    #: Output projection names inside the attention module, in order of preference.
    projection_names: ClassVar[tuple[str, ...]] = ("o_proj", "c_proj", "dense", "out_proj")
    #: MLP (feed-forward) names inside a decoder layer, in order of preference.
    mlp_names: ClassVar[tuple[str, ...]] = ("mlp", "feed_forward", "ffn", "block_sparse_moe")
    #: Final norm names among the children of the layers' parent module.
    norm_names: ClassVar[tuple[str, ...]] = (
        "norm",
        "ln_f",
        "final_layer_norm",
        "final_layernorm",
        "norm_f",
        "final_norm",
    )

    def __init__(self, config: Any = None, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        # model -> resolved layers path; weak so adapters never keep models alive.
        self._paths: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    # -- matching ------------------------------------------------------------------
    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        return cls.explain_mismatch(model) == ""

    @classmethod
    def explain_mismatch(cls, model: nn.Module) -> str:
        """One sentence naming the first site that could not be resolved ("" if none)."""
        try:
            cls()._check(model)
        except _NotResolved as exc:
            return str(exc)
        return ""

    # -- ModelAdapter API ----------------------------------------------------------
    def layers(self, model: nn.Module) -> list[nn.Module]:
        return list(self._guard(self._layers, model).modules)

    def head_module(self, model: nn.Module, layer: int) -> nn.Module:
        layers = self.layers(model)
        if not 0 <= layer < len(layers):
            raise IndexError(f"layer {layer} is out of range: valid layers are 0..{len(layers) - 1}")
        return self._guard(self._projection, model, layers[layer], layer)

    def attention_module(self, model: nn.Module, layer: int) -> nn.Module:
        """The attention module of decoder layer ``layer``."""
        layers = self.layers(model)
        return self._guard(self._attention, model, layers[layer], layer)[1]

    def mlp_module(self, model: nn.Module, layer: int) -> nn.Module:
        """The first child of decoder layer ``layer`` among :attr:`mlp_names`."""
        module = self.layer_module(model, layer)
        return self._guard(self._mlp, model, module, layer)

    def final_norm(self, model: nn.Module) -> nn.Module | None:
        return self._final_norm(model, self._guard(self._layers, model))

    def unembedding(self, model: nn.Module) -> nn.Module:
        return self._guard(self._unembedding, model)

    def shape(self, model: nn.Module) -> ModelShape:
        return self._guard(self._shape, model)

    # -- resolution ----------------------------------------------------------------
    def _guard(self, fn, model, *args):
        try:
            return fn(model, *args)
        except _NotResolved as exc:
            raise UnsupportedModelError(
                f"{type(self).__name__} ('{self.name}') cannot resolve {type(model).__name__}: "
                f"{exc}; {_HINT}"
            ) from None

    def _check(self, model: nn.Module) -> None:
        """Resolve every site, raising ``_NotResolved`` at the first missing one."""
        self._config(model)
        can_generate = getattr(model, "can_generate", None)
        if callable(can_generate):
            try:
                generative = bool(can_generate())
            except Exception:  # noqa: BLE001
                generative = True
            if not generative:
                raise _NotResolved(
                    f"{type(model).__name__} is not a causal (generative) LM: can_generate() is "
                    "False; load the model with AutoModelForCausalLM"
                )
        layers = self._layers(model)
        self._shape(model)  # checks the projection of every layer
        self._final_norm(model, layers)
        self._unembedding(model)

    def _config(self, model: nn.Module) -> Any:
        cfg = text_config(model)
        if cfg is None:
            raise _NotResolved(
                f"{type(model).__name__} has no `config` (a Hugging Face PretrainedConfig with "
                "num_hidden_layers and num_attention_heads)"
            )
        for key in ("num_hidden_layers", "num_attention_heads"):
            value = _int_attr(cfg, key)
            if value is None or value <= 0:
                raise _NotResolved(f"its config has no positive integer `{key}`")
        return cfg

    def _layers(self, model: nn.Module) -> _Layers:
        cfg = self._config(model)
        n = _int_attr(cfg, "num_hidden_layers")
        cached = self._paths.get(model)
        if cached is not None:
            found = _get_path(model, cached)
            if isinstance(found, (nn.ModuleList, nn.Sequential)) and len(found) == n:
                return _Layers(cached, found)
        wrong_length: list[str] = []
        for path in self.layer_paths:
            found = _get_path(model, path)
            if isinstance(found, (nn.ModuleList, nn.Sequential)):
                if len(found) == n:
                    self._paths[model] = path
                    return _Layers(path, found)
                wrong_length.append(f"{path} has {len(found)}")
        if not self.search_layers:
            detail = f" ({', '.join(wrong_length)})" if wrong_length else ""
            raise _NotResolved(
                f"no ModuleList of {n} decoder layers found at {' / '.join(self.layer_paths)}{detail}"
            )
        candidates = [
            (name, mod)
            for name, mod in model.named_modules()
            if isinstance(mod, (nn.ModuleList, nn.Sequential))
            and len(mod) == n
            and self._find_attention(mod[0]) is not None
        ]
        if len(candidates) == 1:
            path, mod = candidates[0]
            self._paths[model] = path
            return _Layers(path, mod)
        if len(candidates) > 1:
            raise _NotResolved(
                f"several ModuleLists of {n} layers with attention modules found "
                f"({', '.join(name for name, _ in candidates)}); the decoder layers are ambiguous"
            )
        lists = [
            name
            for name, mod in model.named_modules()
            if isinstance(mod, (nn.ModuleList, nn.Sequential)) and len(mod) == n
        ]
        if lists:
            raise _NotResolved(
                f"no ModuleList of {n} decoder layers with an attention module found: "
                f"{', '.join(lists)} hold {n} modules but none has a child among "
                f"{'/'.join(self.attention_names)}"
            )
        raise _NotResolved(
            f"no ModuleList of {n} decoder layers found (config.num_hidden_layers={n})"
        )

    def _find_attention(self, layer: nn.Module) -> tuple[str, nn.Module] | None:
        for name in self.attention_names:
            child = _child(layer, name)
            if child is not None:
                return name, child
        return None

    def _attention(self, model: nn.Module, layer: nn.Module, index: int) -> tuple[str, nn.Module]:
        found = self._find_attention(layer)
        if found is None:
            raise _NotResolved(
                f"layer {index} ({type(layer).__name__}) has no attention module among "
                f"{'/'.join(self.attention_names)}"
            )
        return found

    def _projection(self, model: nn.Module, layer: nn.Module, index: int) -> nn.Module:
        attn_name, attn = self._attention(model, layer, index)
        for name in self.projection_names:
            child = _child(attn, name)
            if child is not None:
                return child
        raise _NotResolved(
            f"layer {index} has no attention output projection among "
            f"{'/'.join(self.projection_names)} (looked inside its `{attn_name}`, "
            f"{type(attn).__name__}, whose children are "
            f"{', '.join(attn._modules) or 'none'})"
        )

    def _mlp(self, model: nn.Module, layer: nn.Module, index: int) -> nn.Module:
        for name in self.mlp_names:
            child = _child(layer, name)
            if child is not None:
                return child
        raise _NotResolved(
            f"layer {index} ({type(layer).__name__}) has no MLP among {'/'.join(self.mlp_names)} "
            f"(its children are {', '.join(layer._modules) or 'none'})"
        )

    def _shape(self, model: nn.Module) -> ModelShape:
        cfg = self._config(model)
        layers = self._layers(model)
        num_layers = len(layers.modules)
        heads = _int_attr(cfg, "num_attention_heads")
        hidden = _int_attr(cfg, "hidden_size")
        vocab = _int_attr(cfg, "vocab_size")
        if hidden is None or vocab is None:
            missing = "hidden_size" if hidden is None else "vocab_size"
            raise _NotResolved(f"its config has no integer `{missing}`")
        head_dim = _int_attr(cfg, "head_dim")
        source = "config.head_dim"
        if head_dim is None:
            if hidden % heads:
                raise _NotResolved(
                    f"hidden_size={hidden} is not divisible by num_attention_heads={heads} and "
                    "the config has no head_dim"
                )
            head_dim, source = hidden // heads, "hidden_size // num_attention_heads"
        width = heads * head_dim
        for index, layer in enumerate(layers.modules):
            proj = self._projection(model, layer, index)
            in_features = projection_in_features(proj)
            if in_features is None:
                raise _NotResolved(
                    f"cannot read the input width of layer {index}'s attention output projection "
                    f"({type(proj).__name__}: no in_features)"
                )
            if in_features != width:
                raise _NotResolved(
                    f"layer {index}'s attention output projection takes {in_features} features "
                    f"but num_attention_heads={heads} x head_dim={head_dim} ({source}) = {width}; "
                    "the config and the modules disagree (set config.head_dim correctly)"
                )
        family = getattr(cfg, "model_type", None) or type(model).__name__
        return ModelShape(family, num_layers, heads, head_dim, hidden, vocab)

    def _final_norm(self, model: nn.Module, layers: _Layers) -> nn.Module | None:
        parent_path = layers.path.rpartition(".")[0]
        parent = _get_path(model, parent_path) if parent_path else model
        if isinstance(parent, nn.Module):
            for name in self.norm_names:
                child = _child(parent, name)
                if child is not None:
                    return child
        return None

    def _unembedding(self, model: nn.Module) -> nn.Module:
        getter = getattr(model, "get_output_embeddings", None)
        out = getter() if callable(getter) else None
        if not isinstance(out, nn.Module):
            raise _NotResolved(
                "no unembedding: model.get_output_embeddings() returned nothing (load the model "
                "with AutoModelForCausalLM so it has an LM head)"
            )
        return out

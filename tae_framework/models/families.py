"""Per-family adapters: small overrides of :class:`GenericAdapter`.

A family adapter matches on ``config.model_type`` and pins the paths of that family
(no search), so a module added to the family in a later transformers release cannot
change which module is tapped. They are tried before the generic adapter (higher
priority). Llama-like families (Llama, Mistral, Qwen2/3, Gemma 1/2/3, Phi-3 ...)
need no override: the generic rules resolve them along ``model.layers[i].self_attn.o_proj``.
"""

from __future__ import annotations

from typing import ClassVar

from torch import nn

from .generic import GenericAdapter, _get_path, text_config

__all__ = [
    "BUILTIN_ADAPTERS",
    "FalconAdapter",
    "FamilyAdapter",
    "GPT2Adapter",
    "GPTNeoXAdapter",
    "OPTAdapter",
]


class FamilyAdapter(GenericAdapter):
    """Base of the family adapters: matches ``config.model_type`` in :attr:`model_types`."""

    priority: ClassVar[int] = 10
    search_layers: ClassVar[bool] = False
    #: ``config.model_type`` values this adapter handles.
    model_types: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def explain_mismatch(cls, model: nn.Module) -> str:
        model_type = getattr(text_config(model), "model_type", None)
        if model_type not in cls.model_types:
            return f"model_type {model_type!r} is not one of {', '.join(cls.model_types)}"
        return super().explain_mismatch(model)


class GPT2Adapter(FamilyAdapter):
    """GPT-2: ``transformer.h[i].attn.c_proj`` is a ``Conv1D`` (weight ``[in, out]``)."""

    name: ClassVar[str] = "gpt2"
    model_types: ClassVar[tuple[str, ...]] = ("gpt2",)
    layer_paths: ClassVar[tuple[str, ...]] = ("transformer.h",)
    attention_names: ClassVar[tuple[str, ...]] = ("attn",)
    projection_names: ClassVar[tuple[str, ...]] = ("c_proj",)
    mlp_names: ClassVar[tuple[str, ...]] = ("mlp",)
    norm_names: ClassVar[tuple[str, ...]] = ("ln_f",)


class GPTNeoXAdapter(FamilyAdapter):
    """GPT-NeoX / Pythia: ``gpt_neox.layers[i].attention.dense``."""

    name: ClassVar[str] = "gpt_neox"
    model_types: ClassVar[tuple[str, ...]] = ("gpt_neox",)
    layer_paths: ClassVar[tuple[str, ...]] = ("gpt_neox.layers",)
    attention_names: ClassVar[tuple[str, ...]] = ("attention",)
    projection_names: ClassVar[tuple[str, ...]] = ("dense",)
    mlp_names: ClassVar[tuple[str, ...]] = ("mlp",)
    norm_names: ClassVar[tuple[str, ...]] = ("final_layer_norm",)


class OPTAdapter(FamilyAdapter):
    """OPT: ``model.decoder.layers[i].self_attn.out_proj``; the MLP has no container,
    its output is that of the layer's ``fc2``.

    Each OPT layer also has a ``final_layer_norm`` (of its MLP), so the final norm is
    pinned to the decoder's own. Checkpoints with ``do_layer_norm_before=False``
    (OPT-350m) have no final norm (``None``) and project the hidden states with
    ``project_out`` before the LM head; the unembedding then is
    ``nn.Sequential(project_out, lm_head)`` (a new container around the model's own
    modules, so do not tap it; apply it to residual states for a logit lens).
    """

    name: ClassVar[str] = "opt"
    model_types: ClassVar[tuple[str, ...]] = ("opt",)
    layer_paths: ClassVar[tuple[str, ...]] = ("model.decoder.layers",)
    attention_names: ClassVar[tuple[str, ...]] = ("self_attn",)
    projection_names: ClassVar[tuple[str, ...]] = ("out_proj",)
    mlp_names: ClassVar[tuple[str, ...]] = ("fc2",)
    norm_names: ClassVar[tuple[str, ...]] = ("final_layer_norm",)

    def _unembedding(self, model: nn.Module) -> nn.Module:
        head = super()._unembedding(model)
        project_out = _get_path(model, "model.decoder.project_out")
        if isinstance(project_out, nn.Module):
            return nn.Sequential(project_out, head)
        return head


class FalconAdapter(FamilyAdapter):
    """Falcon: ``transformer.h[i].self_attention.dense`` (decoder layers return tuples)."""

    name: ClassVar[str] = "falcon"
    model_types: ClassVar[tuple[str, ...]] = ("falcon",)
    layer_paths: ClassVar[tuple[str, ...]] = ("transformer.h",)
    attention_names: ClassVar[tuple[str, ...]] = ("self_attention",)
    projection_names: ClassVar[tuple[str, ...]] = ("dense",)
    mlp_names: ClassVar[tuple[str, ...]] = ("mlp",)
    norm_names: ClassVar[tuple[str, ...]] = ("ln_f",)


#: Every built-in adapter class (registered by the built-in plugin).
BUILTIN_ADAPTERS: list[type[GenericAdapter]] = [
    GenericAdapter,
    GPT2Adapter,
    GPTNeoXAdapter,
    OPTAdapter,
    FalconAdapter,
]

"""The table of edit sites: where an activation is read or written, as plain data.

Each :class:`SiteSpec` names the module of a decoder layer that holds the site (through
an adapter method, so a family adapter moves a site by overriding one method), whether
the site is that module's INPUT (a pre-forward tap) or its OUTPUT (a forward tap), and
how the values are laid out (``heads``: ``H`` blocks of ``head_dim``; ``hidden``: one
block of ``hidden_size``). Capture and editing read this one table instead of branching
on site names, and an unknown name is an error that lists the known ones.

The table lives on the adapter (:attr:`ModelAdapter.sites
<tae_framework.models.base.ModelAdapter.sites>`); a family adds or moves a site with a
class attribute::

    class MyAdapter(GenericAdapter):
        sites = {**DEFAULT_SITES, "ffn_in": SiteSpec("ffn_in", "mlp_module", "input", "hidden",
                                                      in_place=False, description="...")}
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal

__all__ = ["DEFAULT_SITES", "SiteSpec", "register_tap"]


@dataclass(frozen=True)
class SiteSpec:
    """One edit site.

    Attributes:
        name: the site's name (``site=`` in configs and edit plans).
        locate: name of the adapter method ``(model, layer) -> nn.Module`` returning the
            module that holds the site in decoder layer ``layer``.
        tensor: ``"input"`` (the module's first input, before it runs) or ``"output"``
            (its output, element 0 of a tuple output).
        layout: ``"heads"`` (``num_heads`` units of ``head_dim`` values; a
            tensor-parallel rank holds a contiguous slice of them) or ``"hidden"`` (one
            unit of ``hidden_size`` values).
        in_place: whether an edit of the last position may write the tensor in place
            (it is a fresh activation nothing else holds). ``False`` where the tensor is
            also seen elsewhere, e.g. a layer's input, which is the previous layer's
            output recorded in ``hidden_states``.
        description: one line for docs and error messages.
    """

    name: str
    locate: str
    tensor: Literal["input", "output"]
    layout: Literal["heads", "hidden"]
    in_place: bool
    description: str


def _table(*specs: SiteSpec) -> Mapping[str, SiteSpec]:
    return MappingProxyType({s.name: s for s in specs})


#: The sites every built-in adapter knows (read-only).
DEFAULT_SITES: Mapping[str, SiteSpec] = _table(
    SiteSpec(
        "heads", "head_module", "input", "heads", True,
        "head-wise: input of the attention output projection, [B, T, H*d]",
    ),
    SiteSpec(
        "residual", "layer_module", "output", "hidden", True,
        "residual stream leaving the decoder layer, [B, T, hidden]",
    ),
    SiteSpec(
        "residual_in", "layer_module", "input", "hidden", False,
        "residual stream entering the decoder layer, [B, T, hidden]",
    ),
    SiteSpec(
        "attn_out", "head_module", "output", "hidden", True,
        "output of the attention output projection (before the residual add), [B, T, hidden]",
    ),
    SiteSpec(
        "mlp_out", "mlp_module", "output", "hidden", True,
        "output of the layer's MLP (before the residual add), [B, T, hidden]",
    ),
)  # fmt: skip


def register_tap(module: Any, spec: SiteSpec, input_tap: Any, output_tap: Any) -> Any:
    """Register the tap that sees ``spec``'s tensor on ``module`` (the module the site's
    ``locate`` returned) and return its removable handle: ``input_tap`` as a forward
    pre-hook with keyword arguments for an input site, ``output_tap`` as a forward hook
    for an output site. Capture and the PyTorch-hook backend both install their taps
    through this one rule."""
    if spec.tensor == "input":
        return module.register_forward_pre_hook(input_tap, with_kwargs=True)
    return module.register_forward_hook(output_tap)

"""Where a model's sites live: checks for models split over devices or offloaded.

A model loaded with ``device_map`` (``"auto"``, or a dict naming ``"cpu"`` / ``"disk"``
for some modules) keeps the weights of offloaded modules on the ``meta`` device and
lets accelerate's hooks bring them in for each forward pass. Taps and edits never read
weights, so such models are captured and edited like any other. A module left on
``meta`` WITHOUT such a hook (a hand-made device map, ``init_empty_weights`` without
``dispatch_model``, or hooks removed with ``remove_hook_from_submodules``) cannot run:
:func:`check_sites_placed` says so before any forward pass instead of a failure deep
inside torch.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from ..errors import ConfigError

__all__ = ["check_sites_placed", "has_offload_hook", "meta_parameters"]


def meta_parameters(module: nn.Module) -> list[str]:
    """Names of the parameters and buffers of ``module`` held on the ``meta`` device."""
    named = list(module.named_parameters()) + list(module.named_buffers())
    return [n for n, t in named if t.device.type == "meta"]


def has_offload_hook(module: nn.Module) -> bool:
    """Whether accelerate brings ``module``'s weights in at forward time (an
    ``AlignDevicesHook`` with offload, alone or inside a ``SequentialHook``)."""
    hook = getattr(module, "_hf_hook", None)
    hooks = getattr(hook, "hooks", None) or ([hook] if hook is not None else [])
    return any(getattr(h, "offload", False) or getattr(h, "weights_map", None) is not None for h in hooks)


def _unloaded(model: nn.Module, module: nn.Module) -> list[str]:
    """Meta weights of ``module`` (and its submodules) that no offload hook loads: a
    weight is covered by a hook on the module holding it or on any module above it."""
    names = {id(m): n for n, m in model.named_modules()}
    prefix = names.get(id(module), "")
    lost: list[str] = []
    for sub_name, sub in module.named_modules():
        direct = [n for n, t in [*sub.named_parameters(recurse=False), *sub.named_buffers(recurse=False)]
                  if t.device.type == "meta"]
        if not direct:
            continue
        full = ".".join(p for p in (prefix, sub_name) if p)
        parts = full.split(".") if full else []
        chain = [model, *(model.get_submodule(".".join(parts[: i + 1])) for i in range(len(parts)))]
        if not any(has_offload_hook(m) for m in chain):
            lost += [".".join(p for p in (full, n) if p) for n in direct]
    return lost


def check_sites_placed(model: nn.Module, modules: Sequence[nn.Module], site: str) -> None:
    """Refuse site modules whose weights are on ``meta`` with nothing to load them.

    Raises:
        ConfigError: naming the module, its meta weights and the fix.
    """
    for module in modules:
        if not meta_parameters(module):
            continue
        lost = _unloaded(model, module)
        if lost:
            raise ConfigError(
                f"the {site} site has weights on the meta device ({', '.join(lost[:3])}) and no "
                "accelerate offload hook to load them, so the model cannot run them. Load the "
                "model with device_map='auto' (or a device map with 'cpu'/'disk' entries and an "
                "offload_folder), or dispatch it with accelerate.dispatch_model(model, device_map, "
                "offload_dir=...), instead of leaving modules on meta"
            )

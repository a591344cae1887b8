"""The base class shared by every pluggable component.

A component is a class with a registry ``name``, a pydantic ``Config`` and, when it
learns anything, attributes whose names end in ``_``. The constructor only validates
and stores the config; ``fit`` returns ``self``; reading a learned attribute before
``fit`` raises :class:`~tae_framework.errors.NotFittedError`.

Learned state is saved without pickle: tensors go to safetensors, everything else
must be JSON (see :meth:`Component.get_state`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from abc import ABC
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import ValidationError

from .config import ComponentConfig, format_validation_error
from .errors import ArtifactError, ConfigError, NotFittedError

__all__ = ["NAME_PATTERN", "Component", "state_dataclass", "tensor_sha256"]

#: Registry names: lower case, digits, ``-`` and ``_``; must start with a letter.
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_\-]*$")

_STATE_TYPES: dict[str, type] = {}


def state_dataclass(cls: type) -> type:
    """Mark a dataclass whose tensor and JSON fields can be saved as component state."""
    _STATE_TYPES[cls.__name__] = cls
    return cls



def tensor_sha256(tensor: torch.Tensor) -> str:
    """SHA-256 of a tensor's dtype, shape and raw bytes (as stored on disk, row-major).

    Used as the checksum of saved tensors: any changed byte, dtype or shape changes it.
    """
    t = tensor.detach().to("cpu").contiguous()
    h = hashlib.sha256(f"{str(t.dtype).removeprefix('torch.')}{tuple(t.shape)}".encode())
    if t.numel():
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _to_jsonable(value: Any, where: str) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_to_jsonable(v, where) for v in value]
    if isinstance(value, dict):
        return {str(k): _to_jsonable(v, where) for k, v in value.items()}
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(
        f"learned attribute '{where}' of type {type(value).__name__} cannot be saved: "
        "store tensors, numbers, strings, lists or dicts (override get_state/set_state otherwise)"
    )


class Component(ABC):
    """Base of every role's abstract class. Subclasses set ``name`` and ``Config``."""

    #: Registry name (unique within a role).
    name: ClassVar[str] = ""
    #: Role name, set by each role's abstract base class.
    role: ClassVar[str] = ""
    #: The pydantic config class (frozen, extra keys forbidden).
    Config: ClassVar[type[ComponentConfig]] = ComponentConfig

    def __init__(self, config: ComponentConfig | dict[str, Any] | None = None, **kwargs: Any):
        if config is not None and kwargs:
            raise ConfigError(
                f"{type(self).__name__}: pass either a config object/dict or keyword arguments, not both"
            )
        if isinstance(config, self.Config):
            self.config = config
            return
        if isinstance(config, ComponentConfig):
            raise ConfigError(
                f"{type(self).__name__} expects a {self.Config.__name__}, got {type(config).__name__}"
            )
        data = dict(config or {}, **kwargs)
        try:
            self.config = self.Config.model_validate(data)
        except ValidationError as exc:
            label = f"config of {self.role or 'component'} '{self.name or type(self).__name__}'"
            raise ConfigError(format_validation_error(exc, label)) from None

    # -- sklearn-like learned state -------------------------------------------------
    def __getattr__(self, item: str) -> Any:
        # Only called when normal lookup fails: learned attributes before fit.
        if item.endswith("_") and not item.startswith("__"):
            raise NotFittedError(
                f"{type(self).__name__} is not fitted yet: '{item}' is set by fit(); "
                f"call fit(...) first (or load a saved pipeline)"
            )
        raise AttributeError(f"{type(self).__name__!s} has no attribute {item!r}")

    def learned_attributes(self) -> list[str]:
        """Names of the learned attributes currently set (those ending in ``_``)."""
        return sorted(k for k in vars(self) if k.endswith("_") and not k.startswith("_"))

    @property
    def is_fitted(self) -> bool:
        return bool(self.learned_attributes())

    def check_is_fitted(self) -> None:
        """Raise :class:`NotFittedError` unless ``fit`` has been called."""
        if not self.is_fitted:
            raise NotFittedError(
                f"{type(self).__name__} ('{self.name}') is not fitted yet: call fit(...) first"
            )

    # -- persistence (no pickle) -------------------------------------------------------
    def get_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Return ``(tensors, meta)``: learned tensors and JSON-able learned values.

        The default walks the learned attributes: tensors and numpy arrays become
        tensors, dataclasses marked with :func:`state_dataclass` are flattened with a
        ``name.field`` prefix, everything else must be JSON-able.
        """
        tensors: dict[str, torch.Tensor] = {}
        meta: dict[str, Any] = {}
        for key in self.learned_attributes():
            _flatten(key, getattr(self, key), tensors, meta)
        return tensors, meta

    def set_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> Component:
        """Restore what :meth:`get_state` returned; returns ``self``."""
        values: dict[str, Any] = {}
        for key, value in tensors.items():
            values[key] = value
        values.update(meta)
        try:
            for key, value in _unflatten(values).items():
                setattr(self, key, value)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ArtifactError(
                f"saved state of {type(self).__name__} is inconsistent ({exc}); "
                "the artifact is corrupted or was written by an incompatible version: refit and save again"
            ) from None
        return self

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.config.model_dump().items())
        return f"{type(self).__name__}({fields})"


def _flatten(key: str, value: Any, tensors: dict, meta: dict) -> None:
    if isinstance(value, torch.Tensor):
        tensors[key] = value.detach().cpu().contiguous()
    elif isinstance(value, np.ndarray):
        tensors[key] = torch.from_numpy(np.ascontiguousarray(value))
    elif dataclasses.is_dataclass(value) and type(value).__name__ in _STATE_TYPES:
        meta[f"{key}.__type__"] = type(value).__name__
        for f in dataclasses.fields(value):
            _flatten(f"{key}.{f.name}", getattr(value, f.name), tensors, meta)
    else:
        meta[key] = _to_jsonable(value, key)


def _unflatten(values: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    groups: dict[str, dict[str, Any]] = {}
    for key, value in values.items():
        if "." in key:
            head, rest = key.split(".", 1)
            groups.setdefault(head, {})[rest] = value
        else:
            out[key] = value
    for head, sub in groups.items():
        type_name = sub.pop("__type__")
        cls = _STATE_TYPES[type_name]
        out[head] = cls(**_unflatten(sub))
    return out

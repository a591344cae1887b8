"""Pydantic configuration models.

Every component has one frozen, ``extra="forbid"`` config class derived from
:class:`ComponentConfig`, so a misspelled key is an error, never a silent default.
A :class:`PipelineConfig` holds one :class:`ComponentSpec` (``{type, config}``) per
role; it is validated in two steps: the shape here, then each named component's own
config when the pipeline is built from a registry.
"""

from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from .errors import ConfigError

__all__ = [
    "ROLES",
    "ComponentConfig",
    "ComponentSpec",
    "PipelineConfig",
    "format_validation_error",
]

#: The pipeline roles, in data-path order.
ROLES: tuple[str, ...] = ("source", "aggregator", "prober", "estimator", "intervener")


def _accepts(annotation: Any, kind: type) -> bool:
    """Whether a field annotation admits values of ``kind`` (looking inside unions)."""
    if annotation is kind:
        return True
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _accepts(typing.get_args(annotation)[0], kind)
    if origin in (typing.Union, types.UnionType):
        return any(_accepts(a, kind) for a in typing.get_args(annotation))
    return False


def _reject_bool_counts(model_cls: type[BaseModel], data: Any) -> Any:
    """``True``/``False`` where an integer is expected is an error, not 1/0.

    Pydantic's lax mode turns booleans into integers (``top_k=True`` would select one
    head); every other lax conversion (``"8"`` from a JSON or command-line value) stays.
    A field named ``seed`` must also lie in numpy's seed range.
    """
    if not isinstance(data, dict):
        return data
    for name, info in model_cls.model_fields.items():
        value = data.get(name, data.get(info.alias) if info.alias else None)
        if isinstance(value, bool) and _accepts(info.annotation, int) and not _accepts(info.annotation, bool):
            raise PydanticCustomError(
                "tae_value_error",
                "'{name}' expects an integer, got the boolean {value}: pass a number",
                {"name": name, "value": str(value)},
            )
        if name == "seed" and isinstance(value, int) and not 0 <= value < 2**32:
            # numpy and scikit-learn seeds: refused here, not after a full capture pass
            raise PydanticCustomError(
                "tae_value_error",
                "'seed' must be between 0 and 2**32 - 1 (numpy's range), got {value}",
                {"value": str(value)},
            )
    return data


class ComponentConfig(BaseModel):
    """Base class of every component's config: frozen, unknown keys rejected.

    Floats must be finite (``NaN`` / ``inf`` are rejected when the config is built) and
    a boolean is never accepted where an integer is expected.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_bool_counts(cls, data: Any) -> Any:
        return _reject_bool_counts(cls, data)


class ComponentSpec(BaseModel):
    """One role's choice of component: its registry name and its config."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: str = Field(description="Registry name of the component, e.g. `mig` or `logistic`.")
    config: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments validated by the component's Config."
    )


def _spec(type_: str, **config: Any) -> ComponentSpec:
    return ComponentSpec(type=type_, config=config)


class PipelineConfig(BaseModel):
    """A complete method: one component per role plus the global seed.

    Presets (``tae``, ``iti``, ...) are named instances of this class. ``estimator``
    may be ``None`` for methods without per-token signals (ITI, CAA).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_bool_counts(cls, data: Any) -> Any:
        return _reject_bool_counts(cls, data)

    source: ComponentSpec = Field(
        default_factory=lambda: _spec("hf"), description="Activation source (capture)."
    )
    aggregator: ComponentSpec = Field(description="Turns an answer's token activations into one feature.")
    prober: ComponentSpec = Field(description="Probes heads, selects the top K, finds directions.")
    estimator: ComponentSpec | None = Field(
        default=None, description="Per-token misalignment signals; `None` for fixed-strength methods."
    )
    intervener: ComponentSpec = Field(description="Installs the edits on a live model.")
    seed: int = Field(default=42, description="Seed for every random choice of the fit.")
    validation_fraction: float = Field(
        default=0.2, gt=0.0, lt=1.0,
        description="Share of the fitting groups (questions) held out to rank heads.",
    )

    @classmethod
    def parse(cls, data: dict[str, Any] | PipelineConfig) -> PipelineConfig:
        """Validate a plain dict, raising :class:`ConfigError` with a readable message."""
        if isinstance(data, cls):
            return data
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, "pipeline config")) from None


def format_validation_error(exc: ValidationError, where: str) -> str:
    """Turn a pydantic error into one message that names each bad key and the fix."""
    lines = [f"invalid {where}:"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "<root>"
        if err["type"] == "extra_forbidden":
            lines.append(f"  - unknown key '{loc}': remove it or check its spelling")
        elif err["type"] == "tae_value_error":
            lines.append(f"  - {err['msg']}")
        elif err["type"] == "missing":
            lines.append(f"  - missing key '{loc}': it is required")
        else:
            lines.append(f"  - '{loc}': {err['msg']} (got {err.get('input')!r})")
    return "\n".join(lines)

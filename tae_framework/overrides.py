"""One rule for updating a pipeline config: used by
:meth:`~tae_framework.pipeline.AlignmentPipeline.from_preset`, the evaluation runner
(``--set ROLE.KEY=VALUE``) and the sweep."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from .config import ROLES
from .errors import ConfigError

__all__ = ["PIPELINE_KEYS", "apply_overrides"]

#: Keys of a pipeline config that are not roles.
PIPELINE_KEYS: tuple[str, ...] = ("seed", "validation_fraction")


def apply_overrides(pipeline_config: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A pipeline config dict with ``overrides`` applied (the input is not modified).

    ``overrides`` maps a role to config updates (``{"prober": {"top_k": 8}}``), or a
    pipeline key (``seed``, ``validation_fraction``) to its value. ``{"role": {"type":
    NAME, ...}}`` replaces the role's component (its config starts empty unless the
    type is unchanged); ``{"estimator": None}`` removes the estimator.

    Raises:
        ConfigError: an unknown role, a role the config lacks, a non-dict update, or
            the removal of a required role.
    """
    out = copy.deepcopy(dict(pipeline_config))
    for role, update in overrides.items():
        if role in PIPELINE_KEYS:
            out[role] = update
            continue
        if role not in ROLES:
            raise ConfigError(
                f"unknown role {role!r} in the overrides: roles are {', '.join(ROLES)} (plus the "
                f"pipeline keys seed and validation_fraction), e.g. --set prober.top_k=8"
            )
        if update is None:
            if role != "estimator":
                raise ConfigError(f"the {role} cannot be removed: every method needs one")
            out[role] = None
            continue
        if not isinstance(update, Mapping):
            raise ConfigError(
                f"the override of {role!r} must map its config keys to values (--set "
                f"{role}.KEY=VALUE), got {update!r}"
            )
        spec = out.get(role)
        update = dict(update)
        if "type" in update:
            new_type = update.pop("type")
            base = spec["config"] if spec is not None and spec.get("type") == new_type else {}
            out[role] = {"type": new_type, "config": {**base, **update}}
            continue
        if spec is None:
            present = [r for r in ROLES if out.get(r)]
            raise ConfigError(
                f"the method has no {role} to override (its roles: {', '.join(present)}); set "
                f"{role}.type=NAME to add one"
            )
        out[role] = {"type": spec["type"], "config": {**spec.get("config", {}), **update}}
    return out

"""The conformance kit over every registered component (built-ins and installed plugins)."""

from __future__ import annotations

import pytest

from tae_framework.plugins import create_plugin_manager
from tae_framework.testing import check_component, parametrize_with_checks
from tae_framework.testing.checks import checks_for

_REGISTRY = create_plugin_manager().registry


def _instances():
    out = []
    for role, table in sorted(_REGISTRY.components.items()):
        for _name, entry in sorted(table.items()):
            cls = entry.obj
            if role == "prober" and "top_k" in cls.Config.model_fields:
                out.append(cls(top_k=2))
            else:
                out.append(cls())
    return out


def test_every_role_has_registered_components():
    names = {(role, n) for role, t in _REGISTRY.components.items() for n in t}
    for expected in [("aggregator", "mig"), ("prober", "logistic"), ("estimator", "mai"), ("intervener", "mai"),
                     ("intervener", "fixed"), ("source", "hf"), ("judge", "hf"), ("adapter", "generic")]:
        assert expected in names


@parametrize_with_checks(_instances())
def test_registered_component_conforms(component, check):
    check(component)


def test_a_broken_component_fails_the_kit():
    from tae_framework.aggregators.mig import MIGAggregator

    class Shapeless(MIGAggregator):
        """Returns the wrong shape."""

        name = "shapeless"

        def aggregate(self, batch):
            return super().aggregate(batch)[:, :1]

    with pytest.raises(AssertionError, match=r"expected \[B, L, D\]"):
        check_component(Shapeless())
    assert len(checks_for(Shapeless())) >= 3

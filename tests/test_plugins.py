"""Plugin discovery, registration, blocking and failure isolation."""

from __future__ import annotations

import json
import textwrap
import warnings

import pytest

from tae_framework.cli import main as cli_main
from tae_framework.errors import PluginError, UnknownComponentError
from tae_framework.plugins import ENV_BLOCKED, ENV_DISABLE_AUTOLOAD, create_plugin_manager
from tae_framework.registry import Registry


def make_distribution(root, dist: str, module: str, body: str, version: str = "0.3.1", ep_name: str | None = None):
    """Write a module and a ``*.dist-info`` with an entry point, importable from ``root``."""
    (root / f"{module}.py").write_text(textwrap.dedent(body))
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[tae_framework.plugins]\n{ep_name or dist} = {module}\n")


GOOD_PLUGIN = """
    import torch
    from tae_framework import hookimpl
    from tae_framework.aggregators.base import GraphAggregator

    class FirstToken(GraphAggregator):
        '''Feature = activation of the first answer token.'''
        name = "first_token"
        def aggregate(self, batch):
            return torch.stack([t.answer[:, 0] for t in batch]).float()

    @hookimpl
    def tae_register_components(register):
        register(FirstToken)

    @hookimpl
    def tae_register_presets(register):
        register("first-token-iti", {
            "aggregator": {"type": "first_token"},
            "prober": {"type": "logistic", "config": {"top_k": 2, "rank_on": "features"}},
            "intervener": {"type": "fixed", "config": {"alpha": 2.0}},
        })
"""


@pytest.fixture
def plugin_path(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv(ENV_BLOCKED, raising=False)
    monkeypatch.delenv(ENV_DISABLE_AUTOLOAD, raising=False)
    return tmp_path


def test_builtins_register_every_role(registry: Registry):
    for role in ("source", "aggregator", "prober", "estimator", "intervener", "judge", "adapter"):
        assert registry.components[role], f"no built-in {role}"
    assert {"mig", "mean", "last_token"} <= set(registry.components["aggregator"])
    assert registry.entry("aggregator", "mig").distribution == "tae-framework"
    assert "tae" in registry.presets
    assert not registry.failed_plugins


def test_each_manager_has_its_own_registry():
    a, b = create_plugin_manager(), create_plugin_manager()
    assert a is not b and a.registry is not b.registry
    assert a.registry.components["aggregator"].keys() == b.registry.components["aggregator"].keys()


def test_entry_point_plugin_is_discovered_with_its_distribution(plugin_path):
    make_distribution(plugin_path, "tae-first-token", "tae_first_token_plugin", GOOD_PLUGIN)
    reg = create_plugin_manager().registry
    entry = reg.entry("aggregator", "first_token")
    assert (entry.distribution, entry.version) == ("tae-first-token", "0.3.1")
    assert reg.preset("first-token-iti").aggregator.type == "first_token"


def test_a_plugin_component_is_used_through_a_config(plugin_path):
    from tae_framework import AlignmentPipeline
    from tae_framework.testing.models import tiny_model

    make_distribution(plugin_path, "tae-first-token", "tae_first_token_plugin4", GOOD_PLUGIN)
    reg = create_plugin_manager().registry
    model, tok = tiny_model("llama")
    rows = [
        {"prompt": f"Q: {c}? A:", "completion": ans, "label": lab, "group": c}
        for c in "abcdefgh"
        for ans, lab in ((" yes", 1), (" no no", 0))
    ]
    pipe = AlignmentPipeline.from_preset("first-token-iti", registry=reg).fit(model, tok, rows)
    assert pipe.aggregator.name == "first_token" and pipe.targets_.num_targets == 2
    assert pipe.provenance["aggregator"] == {"distribution": "tae-first-token", "version": "0.3.1"}


def test_blocking_a_plugin_by_env_removes_its_components(plugin_path, monkeypatch):
    make_distribution(plugin_path, "tae-first-token", "tae_first_token_plugin2", GOOD_PLUGIN)
    monkeypatch.setenv(ENV_BLOCKED, "tae-first-token, something-else")
    reg = create_plugin_manager().registry
    assert "first_token" not in reg.components["aggregator"]
    with pytest.raises(UnknownComponentError, match="first-token-iti"):
        reg.preset("first-token-iti")


def test_disabling_autoload_skips_entry_points_but_keeps_builtins(plugin_path, monkeypatch):
    make_distribution(plugin_path, "tae-first-token", "tae_first_token_plugin3", GOOD_PLUGIN)
    monkeypatch.setenv(ENV_DISABLE_AUTOLOAD, "1")
    reg = create_plugin_manager().registry
    assert "first_token" not in reg.components["aggregator"]
    assert "mig" in reg.components["aggregator"]


def test_plugin_that_raises_on_import_is_reported_and_skipped(plugin_path):
    make_distribution(plugin_path, "tae-broken", "tae_broken_plugin", "raise RuntimeError('kaputt')\n")
    with pytest.warns(UserWarning, match="tae-broken.*kaputt"):
        pm = create_plugin_manager()
    assert "tae-broken" in pm.failed_plugins
    assert "mig" in pm.registry.components["aggregator"]


def test_plugin_that_raises_while_registering_is_skipped_entirely(plugin_path):
    body = GOOD_PLUGIN.replace("register(FirstToken)", "register(FirstToken)\n        raise ValueError('half-way')")
    make_distribution(plugin_path, "tae-halfway", "tae_halfway_plugin", body)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reg = create_plugin_manager().registry
    assert any("tae-halfway" in str(w.message) and "half-way" in str(w.message) for w in caught)
    assert "first_token" not in reg.components["aggregator"], "a failed plugin must leave nothing behind"
    assert "tae-halfway" in reg.failed_plugins


def test_misspelled_hook_implementation_is_caught(plugin_path):
    body = """
        from tae_framework import hookimpl

        @hookimpl
        def tae_register_componets(register):
            pass
    """
    make_distribution(plugin_path, "tae-typo", "tae_typo_plugin", body)
    with pytest.warns(UserWarning, match="tae-typo"):
        pm = create_plugin_manager()
    assert "tae_register_componets" in pm.failed_plugins["tae-typo"]


def test_duplicate_component_name_names_both_plugins(plugin_path):
    body = GOOD_PLUGIN.replace('name = "first_token"', 'name = "mig"')
    make_distribution(plugin_path, "tae-clash", "tae_clash_plugin", body)
    with pytest.warns(UserWarning, match="already provided by plugin 'tae_framework.builtins'"):
        reg = create_plugin_manager().registry
    assert reg.entry("aggregator", "mig").distribution == "tae-framework"


def test_register_rejects_non_components_and_bad_names():
    reg = Registry()
    with pytest.raises(PluginError, match="not a Component subclass"):
        reg.add_component(dict, "p", "d", "1")

    from tae_framework.aggregators.mig import MIGAggregator

    class Bad(MIGAggregator):
        name = "Bad Name"

    with pytest.raises(PluginError, match="invalid name"):
        reg.add_component(Bad, "p", "d", "1")


def test_unknown_component_lists_the_known_ones(registry):
    with pytest.raises(UnknownComponentError) as err:
        registry.build("aggregator", {"type": "mgi"})
    msg = str(err.value)
    assert "mgi" in msg and "mig" in msg and "mean" in msg and "install the plugin" in msg


def test_unknown_preset_lists_known_presets(registry):
    with pytest.raises(UnknownComponentError, match="known presets: .*tae"):
        registry.preset("tea")


def test_cli_lists_builtins_by_role(capsys):
    assert cli_main(["plugins"]) == 0
    out = capsys.readouterr().out
    for name in ("mig", "logistic", "mai", "fixed", "hf", "generic", "gpt2"):
        assert name in out
    assert "tae-framework" in out
    assert cli_main(["plugins", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["components"]
    by_kind = {(r["kind"], r["name"]) for r in rows}
    assert ("aggregator", "mig") in by_kind and ("preset", "tae") in by_kind and ("estimator", "mai") in by_kind

"""Class 5: hostile plugins and files never end the process or leak a raw traceback."""

from __future__ import annotations

import textwrap

import pytest

from tae_framework.plugins import (
    ENV_BLOCKED,
    ENV_DISABLE_AUTOLOAD,
    PluginWarning,
    create_plugin_manager,
)


def make_distribution(root, dist: str, module: str, body: str) -> None:
    """A module plus a ``*.dist-info`` declaring it as a tae_framework plugin."""
    (root / f"{module}.py").write_text(textwrap.dedent(body))
    info = root / f"{dist.replace('-', '_')}-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text(f"[tae_framework.plugins]\n{dist} = {module}\n")


@pytest.fixture
def plugin_path(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv(ENV_BLOCKED, raising=False)
    monkeypatch.delenv(ENV_DISABLE_AUTOLOAD, raising=False)
    return tmp_path


@pytest.mark.parametrize("body", ["import sys\nsys.exit(3)\n", "raise SystemExit('bye')\n", "import sys\nsys.exit()\n"])
def test_plugin_calling_sys_exit_at_import_is_skipped_by_name(plugin_path, body):
    make_distribution(plugin_path, "tae-quitter", "tae_quitter_plugin", body)
    with pytest.warns(PluginWarning, match="plugin 'tae-quitter' failed to import.*SystemExit"):
        pm = create_plugin_manager()
    assert "SystemExit" in pm.failed_plugins["tae-quitter"]
    assert "mig" in pm.registry.components["aggregator"]  # the process and the built-ins live on


def test_plugin_calling_sys_exit_while_registering_is_skipped(plugin_path):
    body = """
        import sys
        from tae_framework import hookimpl

        @hookimpl
        def tae_register_components(register):
            sys.exit(1)
    """
    make_distribution(plugin_path, "tae-exit-late", "tae_exit_late_plugin", body)
    with pytest.warns(PluginWarning, match="tae-exit-late.*register.*SystemExit"):
        reg = create_plugin_manager().registry
    assert "tae-exit-late" in reg.failed_plugins
    assert "logistic" in reg.components["prober"]


def test_keyboard_interrupt_in_a_plugin_still_interrupts(plugin_path):
    make_distribution(plugin_path, "tae-ctrl-c", "tae_ctrl_c_plugin", "raise KeyboardInterrupt\n")
    with pytest.raises(KeyboardInterrupt):
        create_plugin_manager()

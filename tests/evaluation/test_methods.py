"""How ``tae eval`` / ``run_eval`` read a method: what each kind of bad method says."""

from __future__ import annotations

import json

import pytest

from tae_framework.errors import ArtifactError, ConfigError, UnknownComponentError
from tae_framework.evaluation.methods import resolve_method
from tae_framework.pipeline import CONFIG_FILE
from tae_framework.plugins import default_registry


@pytest.fixture(scope="module")
def registry():
    return default_registry()


def test_a_preset_and_a_config_file_resolve(registry, tmp_path):
    preset = resolve_method("tae", None, registry)
    assert preset.kind == "preset"
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"pipeline": preset.config.model_dump(mode="json")}))
    from_file = resolve_method(str(path), {"intervener": {"alpha": 7.0}}, registry)
    assert from_file.kind == "config" and from_file.config.intervener.config["alpha"] == 7.0


def test_a_file_inside_a_saved_pipeline_names_its_directory(registry, tmp_path):
    saved = tmp_path / "pipe"
    saved.mkdir()
    (saved / CONFIG_FILE).write_text("{}")
    weights = saved / "state.safetensors"
    weights.write_bytes(b"\0")
    with pytest.raises(ConfigError) as err:
        resolve_method(str(weights), None, registry)
    assert "is a file" in str(err.value) and str(saved) in str(err.value)


def test_a_stray_file_is_not_taken_for_a_preset(registry, tmp_path):
    stray = tmp_path / "notes.txt"
    stray.write_text("tae")
    with pytest.raises(ConfigError, match="is a file but neither"):
        resolve_method(str(stray), None, registry)


def test_missing_paths_and_unknown_presets(registry, tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_method(str(tmp_path / "missing.json"), None, registry)
    with pytest.raises(UnknownComponentError, match="neither"):
        resolve_method("no-such-preset", None, registry)
    with pytest.raises(ArtifactError, match="not a saved pipeline"):
        resolve_method(str(tmp_path), None, registry)

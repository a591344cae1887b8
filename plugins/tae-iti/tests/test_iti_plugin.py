"""The ITI plugin: discovery, presets, controls and conformance."""

from __future__ import annotations

import pytest
import torch
from tae_iti.probers import RandomControlProber

from tae_framework import AlignmentPipeline
from tae_framework.errors import UnknownComponentError
from tae_framework.plugins import create_plugin_manager
from tae_framework.testing import parametrize_with_checks
from tae_framework.testing.data import toy_contrast
from tae_framework.testing.models import tiny_model


def test_presets_and_component_come_from_the_tae_iti_distribution():
    reg = create_plugin_manager().registry
    assert reg.presets["iti"].distribution == "tae-iti"
    assert reg.presets["iti-random"].distribution == "tae-iti"
    assert reg.entry("prober", "iti-random").distribution == "tae-iti"
    cfg = reg.preset("iti")
    assert cfg.prober.config["top_k"] == 48 and cfg.intervener.config["alpha"] == 15.0
    assert cfg.aggregator.type == "last_token" and cfg.estimator is None


@pytest.mark.parametrize("preset", ["iti", "iti-random", "tae"])
def test_swapping_presets_changes_nothing_but_the_name(preset):
    model, tok = tiny_model("llama")
    pipe = AlignmentPipeline.from_preset(preset, prober={"top_k": 3}, intervener={"alpha": 5.0})
    pipe.fit(model, tok, toy_contrast())
    prompts = ["Q: is a big? A:", "Q: is z big? A:"]
    edited = pipe.generate(model, tok, prompts, max_new_tokens=6)
    plain = pipe.generate(model, tok, prompts, max_new_tokens=6, edit=False)
    assert len(edited) == 2 and all(isinstance(s, str) for s in edited)
    assert edited != plain


def test_random_direction_control_keeps_heads_and_edit_norm():
    model, tok = tiny_model("llama")
    iti = AlignmentPipeline.from_preset("iti", prober={"top_k": 4}).fit(model, tok, toy_contrast())
    rnd = AlignmentPipeline.from_preset("iti-random", prober={"top_k": 4}).fit(model, tok, toy_contrast())
    a, b = iti.targets_, rnd.targets_
    assert torch.equal(a.layers, b.layers) and torch.equal(a.units, b.units)
    torch.testing.assert_close(a.sigmas, b.sigmas)
    torch.testing.assert_close(b.directions.norm(dim=1), torch.ones(4))
    cos = (a.directions * b.directions).sum(1).abs()
    assert bool((cos < 0.95).all()), "random directions should not coincide with the probed ones"


def test_random_heads_control_draws_other_heads():
    model, tok = tiny_model("llama")
    rnd = AlignmentPipeline.from_preset("iti-random", prober={"top_k": 3, "control": "heads"}).fit(model, tok, toy_contrast())
    assert rnd.targets_.num_targets == 3
    again = AlignmentPipeline.from_preset("iti-random", prober={"top_k": 3, "control": "heads"}).fit(model, tok, toy_contrast())
    assert torch.equal(rnd.targets_.units, again.targets_.units)


def test_blocking_the_plugin_makes_its_preset_unknown(monkeypatch):
    monkeypatch.setenv("TAE_BLOCKED_PLUGINS", "iti")
    reg = create_plugin_manager().registry
    with pytest.raises(UnknownComponentError, match="unknown preset 'iti'"):
        AlignmentPipeline.from_preset("iti", registry=reg)
    with pytest.raises(UnknownComponentError, match="no prober named 'iti-random'"):
        reg.build("prober", {"type": "iti-random"})


@parametrize_with_checks([RandomControlProber(top_k=2), RandomControlProber(top_k=2, control="heads")])
def test_conformance(component, check):
    check(component)

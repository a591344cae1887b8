"""The ITI plugin: discovery, presets, controls and conformance."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tae_iti.probers import RandomControlProber

from tae_framework import AlignmentPipeline
from tae_framework.errors import ConfigError, UnknownComponentError
from tae_framework.plugins import create_plugin_manager
from tae_framework.probers.logistic import LogisticProber
from tae_framework.testing import parametrize_with_checks
from tae_framework.testing.checks import synthetic_probe_inputs
from tae_framework.testing.data import toy_contrast
from tae_framework.testing.models import tiny_model


def test_presets_and_component_come_from_the_tae_iti_distribution():
    reg = create_plugin_manager().registry
    assert reg.presets["iti"].distribution == "tae-iti"
    for name in ("iti-random", "iti-random-direction", "iti-random-matched-norm", "iti-random-heads"):
        assert reg.presets[name].distribution == "tae-iti"
    # the alias is the matched-norm control, not ITI's published one
    assert reg.preset("iti-random") == reg.preset("iti-random-matched-norm")
    published = reg.preset("iti-random-direction").prober.config
    assert published["random_direction"] and published["random_heads"]
    assert published["sigma_along"] == "random"
    assert reg.entry("prober", "iti-random").distribution == "tae-iti"
    cfg = reg.preset("iti")
    assert cfg.prober.config["top_k"] == 48 and cfg.intervener.config["alpha"] == 15.0
    assert cfg.aggregator.type == "last_token" and cfg.estimator is None


@pytest.mark.parametrize("preset", ["iti", "iti-random", "iti-random-direction", "tae"])
def test_swapping_presets_changes_nothing_but_the_name(preset):
    model, tok = tiny_model("llama")
    pipe = AlignmentPipeline.from_preset(preset, prober={"top_k": 3}, intervener={"alpha": 5.0})
    pipe.fit(model, tok, toy_contrast())
    prompts = ["Q: is a big? A:", "Q: is z big? A:"]
    edited = pipe.generate(model, tok, prompts, max_new_tokens=6)
    plain = pipe.generate(model, tok, prompts, max_new_tokens=6, edit=False)
    assert len(edited) == 2 and all(isinstance(s, str) for s in edited)
    assert edited != plain


def test_matched_norm_control_keeps_heads_and_edit_norm():
    model, tok = tiny_model("llama")
    iti = AlignmentPipeline.from_preset("iti", prober={"top_k": 4}).fit(model, tok, toy_contrast())
    rnd = AlignmentPipeline.from_preset("iti-random-matched-norm", prober={"top_k": 4}).fit(
        model, tok, toy_contrast()
    )
    a, b = iti.targets_, rnd.targets_
    assert torch.equal(a.layers, b.layers) and torch.equal(a.units, b.units)
    torch.testing.assert_close(a.sigmas, b.sigmas)
    torch.testing.assert_close(b.directions.norm(dim=1), torch.ones(4))
    cos = (a.directions * b.directions).sum(1).abs()
    assert bool((cos < 0.95).all()), "random directions should not coincide with the probed ones"
    # the control's edit plan differs from ITI's only in its directions
    pa, pb = iti.intervener.plan("last"), rnd.intervener.plan("last")
    assert pa.site == pb.site == "heads" and type(pa.strength) is type(pb.strength)
    assert pa.edited_layers == pb.edited_layers == a.edited_layers()
    for la, lb in zip(pa.layers, pb.layers):
        assert torch.equal(la.units, lb.units)
        torch.testing.assert_close(la.scales, 15.0 * a.sigmas[la.target_index])
        torch.testing.assert_close(lb.scales, la.scales)
        assert not torch.allclose(la.directions, lb.directions)


def test_random_heads_control_draws_other_heads():
    model, tok = tiny_model("llama")
    rnd = AlignmentPipeline.from_preset("iti-random-heads", prober={"top_k": 3}).fit(model, tok, toy_contrast())
    assert rnd.targets_.num_targets == 3
    again = AlignmentPipeline.from_preset("iti-random-heads", prober={"top_k": 3}).fit(model, tok, toy_contrast())
    assert torch.equal(rnd.targets_.units, again.targets_.units)


def _anisotropic_tuning(k: int, dim: int, n: int = 200) -> torch.Tensor:
    """Tuning activations whose spread differs a lot between coordinates, so sigma
    depends on the direction it is measured along."""
    g = torch.Generator().manual_seed(3)
    scale = torch.linspace(0.1, 5.0, dim)
    return torch.randn(n, k, dim, generator=g) * scale


@pytest.mark.parametrize("random_heads", [False, True])
def test_published_control_measures_sigma_along_the_random_direction(random_heads):
    inputs = synthetic_probe_inputs()
    probed = LogisticProber(top_k=3).fit(inputs)
    ctrl = RandomControlProber(top_k=3, random_heads=random_heads, sigma_along="random").fit(inputs)
    t = ctrl.targets_
    tuning = _anisotropic_tuning(t.num_targets, t.unit_dim)
    t = ctrl.calibrate(tuning).targets_
    dirs = t.directions.double().numpy()
    np.testing.assert_allclose(np.linalg.norm(dirs, axis=1), 1.0, atol=1e-6)
    x = tuning.double().numpy()
    along_random = np.stack([(x[:, k] @ dirs[k]).std() for k in range(t.num_targets)])
    np.testing.assert_allclose(t.sigmas.double().numpy(), along_random, rtol=1e-5)
    # and not along the probed (center-of-mass) direction: the check can fail
    p = probed.targets_.directions.double().numpy()
    along_probed = np.stack([(x[:, k] @ p[k]).std() for k in range(t.num_targets)])
    assert np.abs(along_random - along_probed).max() > 0.1
    cos = np.abs((dirs * p).sum(1)) if not random_heads else np.zeros(1)
    assert (cos < 0.95).all()
    same = RandomControlProber(top_k=3, random_heads=random_heads, sigma_along="random").fit(inputs)
    torch.testing.assert_close(same.targets_.directions, ctrl.targets_.directions)  # seeded


def test_matched_norm_measures_sigma_along_the_probed_direction():
    inputs = synthetic_probe_inputs()
    probed = LogisticProber(top_k=3).fit(inputs)
    ctrl = RandomControlProber(top_k=3, sigma_along="probed").fit(inputs)
    tuning = _anisotropic_tuning(3, ctrl.targets_.unit_dim)
    t = ctrl.calibrate(tuning).targets_
    torch.testing.assert_close(t.sigmas, probed.calibrate(tuning).targets_.sigmas)
    assert not torch.allclose(t.directions, probed.targets_.directions)


def test_a_control_with_nothing_random_is_refused():
    with pytest.raises(ConfigError, match="that is ITI itself"):
        RandomControlProber(random_direction=False, random_heads=False)


def test_blocking_the_plugin_makes_its_preset_unknown(monkeypatch):
    monkeypatch.setenv("TAE_BLOCKED_PLUGINS", "iti")
    reg = create_plugin_manager().registry
    with pytest.raises(UnknownComponentError, match="unknown preset 'iti'"):
        AlignmentPipeline.from_preset("iti", registry=reg)
    with pytest.raises(UnknownComponentError, match="no prober named 'iti-random'"):
        reg.build("prober", {"type": "iti-random"})


@parametrize_with_checks(
    [
        RandomControlProber(top_k=2),
        RandomControlProber(top_k=2, random_heads=True, random_direction=False),
        RandomControlProber(top_k=2, random_heads=True, sigma_along="random"),
    ]
)
def test_conformance(component, check):
    check(component)

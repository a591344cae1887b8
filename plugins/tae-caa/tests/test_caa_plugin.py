"""The CAA plugin: residual-site steering through the framework."""

from __future__ import annotations

import pytest
import torch
from tae_caa.prober import MeanDifferenceProber

from tae_framework import AlignmentPipeline
from tae_framework.errors import ConfigError
from tae_framework.plugins import create_plugin_manager
from tae_framework.testing import parametrize_with_checks
from tae_framework.testing.checks import synthetic_probe_inputs
from tae_framework.testing.data import toy_contrast
from tae_framework.testing.models import tiny_model
from tae_framework.types import ProbeInputs


def test_caa_is_listed_with_its_distribution():
    reg = create_plugin_manager().registry
    assert reg.presets["caa"].distribution == "tae-caa"
    assert reg.entry("prober", "caa").distribution == "tae-caa"


def test_caa_fits_on_the_residual_stream_and_generates():
    model, tok = tiny_model("llama")
    pipe = AlignmentPipeline.from_preset("caa", intervener={"alpha": 3.0}).fit(model, tok, toy_contrast())
    t = pipe.targets_
    assert t.site == "residual" and t.num_targets == 1 and t.unit_dim == 32
    plan = pipe.intervener.plan("last")  # one layer, one hidden-size unit, alpha * |mean difference|
    assert plan.site == "residual" and plan.edited_layers == t.layers.tolist()
    (layer,) = plan.layers
    assert layer.units.tolist() == [0] and layer.directions.shape == (1, 32)
    torch.testing.assert_close(layer.scales, 3.0 * t.sigmas)
    prompts = ["Q: is a big? A:", "Q: is q big? A:"]
    assert pipe.generate(model, tok, prompts, max_new_tokens=6) != pipe.generate(model, tok, prompts, max_new_tokens=6, edit=False)


def test_vector_is_the_training_mean_difference():
    inp = synthetic_probe_inputs(layers=3, units=1, dim=6)
    p = MeanDifferenceProber(layers=[1, 2]).fit(inp)
    f = inp.features[inp.train_mask][:, :, 0]
    y = inp.labels[inp.train_mask]
    for k, layer in enumerate([1, 2]):
        diff = f[y == 1, layer].mean(0) - f[y == 0, layer].mean(0)
        torch.testing.assert_close(p.targets_.directions[k] * p.targets_.sigmas[k], diff)


def test_default_layer_is_the_most_separating():
    inp = synthetic_probe_inputs(layers=3, units=1, dim=6)  # the signal is planted in the last layer
    assert MeanDifferenceProber().fit(inp).targets_.layers.tolist() == [2]


def test_head_features_are_rejected_with_the_fix():
    inp = synthetic_probe_inputs(layers=2, units=4, dim=8)
    with pytest.raises(ConfigError, match="site to 'residual'"):
        MeanDifferenceProber().fit(inp)
    one = synthetic_probe_inputs(layers=2, units=1, dim=8)
    with pytest.raises(ConfigError, match="out of range"):
        MeanDifferenceProber(layers=[5]).fit(one)
    assert isinstance(one, ProbeInputs)


@parametrize_with_checks([MeanDifferenceProber(layers=[1])])
def test_conformance(component, check):
    check(component)

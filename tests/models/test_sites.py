"""The site table: every site of every tiny family resolves to the module and tensor it
names, edits land where the table says, and unknown sites are refused by name."""

from __future__ import annotations

import pytest
import torch

from tae_framework.backends.torch_hooks import EditSession, count_taps, install_plan
from tae_framework.errors import ConfigError
from tae_framework.models.sites import DEFAULT_SITES
from tae_framework.plan import EditPlan, LayerPlan
from tae_framework.testing.models import TINY_FAMILIES, tiny_model

# family -> module path of the MLP of layer {i}, written from the architectures' layouts
# (OPT has no MLP container: its MLP ends in the layer's fc2).
MLP_PATHS = {
    **{f: "model.layers.{i}.mlp" for f in ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3")},
    "gpt2": "transformer.h.{i}.mlp",
    "gpt_neox": "gpt_neox.layers.{i}.mlp",
    "opt": "model.decoder.layers.{i}.fc2",
    "falcon": "transformer.h.{i}.mlp",
}
IDS = torch.tensor([[1, 5, 9, 13, 17, 21]])


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _seen_width(module, tensor: str) -> list[int]:
    """Record the last dimension of what enters / leaves ``module``."""
    widths: list[int] = []
    if tensor == "input":
        return widths, module.register_forward_pre_hook(
            lambda m, a, k: widths.append((a[0] if a else next(iter(k.values()))).shape[-1]), with_kwargs=True
        )
    def post(m, a, out):
        widths.append((out[0] if isinstance(out, tuple) else out).shape[-1])
    return widths, module.register_forward_hook(post)


def test_the_table_lists_the_documented_sites():
    assert list(DEFAULT_SITES) == ["heads", "residual", "residual_in", "attn_out", "mlp_out"]
    assert DEFAULT_SITES["heads"].tensor == "input" and DEFAULT_SITES["heads"].layout == "heads"
    assert DEFAULT_SITES["residual"].tensor == "output" and DEFAULT_SITES["residual_in"].tensor == "input"
    with pytest.raises(TypeError):
        DEFAULT_SITES["new"] = DEFAULT_SITES["heads"]  # read-only: extend it in a subclass instead


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_every_site_of_every_family_resolves_and_an_edit_there_changes_the_logits(registry, family):
    model, _ = tiny_model(family)
    adapter = registry.adapter_for(model)
    names = {id(m): n for n, m in model.named_modules()}
    layer = 1
    assert names[id(adapter.site_module(model, layer, "mlp_out"))] == MLP_PATHS[family].format(i=layer)
    assert adapter.site_module(model, layer, "heads") is adapter.head_module(model, layer)
    assert adapter.site_module(model, layer, "residual") is adapter.layers(model)[layer]
    with torch.no_grad():
        base = model(IDS).logits
    for site, spec in adapter.sites.items():
        info = adapter.site_info(model, site)
        module = adapter.site_module(model, layer, site)
        taps = count_taps(model)
        widths, handle = _seen_width(module, spec.tensor)
        # random, not constant: a LayerNorm after the site would remove a constant shift
        direction = torch.randn(1, info.unit_dim, generator=torch.Generator().manual_seed(0))
        plan = EditPlan(site, (LayerPlan(layer, torch.tensor([info.num_units - 1]), direction, torch.tensor([8.0]), torch.tensor([0])),))
        with torch.no_grad(), install_plan(plan, model, adapter, "all"):
            edited = model(IDS).logits
        handle.remove()
        assert count_taps(model) == taps
        assert widths and set(widths) == {info.width}, f"{family} {site}: the {spec.tensor} of the module is not the site"
        assert float((edited - base).abs().max()) > 1e-4, f"{family}: an edit at {site} changed nothing"


def test_the_residual_entering_a_layer_is_the_residual_leaving_the_previous_one(registry):
    model, _ = tiny_model("llama")
    adapter = registry.adapter_for(model)
    d = torch.randn(1, adapter.shape(model).hidden_size, generator=torch.Generator().manual_seed(0))

    def logits(site, layer, scope="all"):
        plan = EditPlan(site, (LayerPlan(layer, torch.tensor([0]), d, torch.tensor([3.0]), torch.tensor([0])),))
        with torch.no_grad(), install_plan(plan, model, adapter, scope):
            return model(IDS).logits

    torch.testing.assert_close(logits("residual_in", 1), logits("residual", 0), rtol=0, atol=1e-5)
    torch.testing.assert_close(logits("residual_in", 1, "last"), logits("residual", 0, "last"), rtol=0, atol=1e-5)
    # Llama adds the MLP output last in a layer: editing it is editing the layer's output
    last = adapter.shape(model).num_layers - 1
    torch.testing.assert_close(logits("mlp_out", last), logits("residual", last), rtol=0, atol=1e-5)


def test_an_edit_of_a_layer_input_leaves_the_recorded_hidden_states_of_the_previous_layer(registry):
    """The layer input is the previous layer's output, also returned in hidden_states:
    the edit must not write it in place."""
    model, _ = tiny_model("llama")
    adapter = registry.adapter_for(model)
    d = torch.ones(1, adapter.shape(model).hidden_size)
    plan = EditPlan("residual_in", (LayerPlan(1, torch.tensor([0]), d, torch.tensor([5.0]), torch.tensor([0])),))
    with torch.no_grad():
        plain = model(IDS, output_hidden_states=True).hidden_states
        with install_plan(plan, model, adapter, "last"):
            edited = model(IDS, output_hidden_states=True).hidden_states
    torch.testing.assert_close(edited[1], plain[1], rtol=0, atol=0)
    assert float((edited[2] - plain[2]).abs().max()) > 1e-3


def test_unknown_sites_are_refused_with_the_known_sites(registry):
    model, _ = tiny_model("llama")
    adapter = registry.adapter_for(model)
    known = "'heads', 'residual', 'residual_in', 'attn_out', 'mlp_out'"
    with pytest.raises(ConfigError, match=f"unknown site 'mlp': adapter 'generic' knows the sites {known}"):
        adapter.site_spec("mlp")
    with pytest.raises(ConfigError, match="unknown site 'mlp'"):
        adapter.site_module(model, 0, "mlp")
    with pytest.raises(ConfigError, match="unknown site 'attention'"):
        EditSession(model, adapter, "attention", [])
    plan = EditPlan("resid", (LayerPlan(0, torch.tensor([0]), torch.ones(1, 32), torch.ones(1), torch.tensor([0])),))
    with pytest.raises(ConfigError, match="unknown site 'resid'"):
        install_plan(plan, model, adapter)

"""Capture at every site of the adapter's site table, and a pipeline fitted and applied
at a site other than ``heads``."""

from __future__ import annotations

import pytest
import torch

from tae_framework import AlignmentPipeline
from tae_framework.builtins import TAE_PRESET
from tae_framework.errors import ConfigError
from tae_framework.models.generic import GenericAdapter
from tae_framework.models.sites import DEFAULT_SITES
from tae_framework.sources import hf as hf_module
from tae_framework.sources import reuse
from tae_framework.sources.hf import HFActivationSource, HFSourceConfig, SiteTaps, capture_all
from tae_framework.testing.models import tiny_model
from tae_framework.types import ModelShape

TEXTS = [
    "Q: Is the sky blue? A: Yes.",
    "Q: 2+2? A: 4",
    "Q: Name a colour that is not red. A: Green, or perhaps blue.",
    "Q: Hi A: Hello there",
    "Q: Why not? A: Because.",
]


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _first(x):
    return x[0] if isinstance(x, (tuple, list)) else x


# Where each site of the table is, written out per family without the adapter:
# (module of layer i, "input" or "output").
HAND = {
    "llama": {
        "heads": (lambda m, i: m.model.layers[i].self_attn.o_proj, "input"),
        "attn_out": (lambda m, i: m.model.layers[i].self_attn.o_proj, "output"),
        "mlp_out": (lambda m, i: m.model.layers[i].mlp, "output"),
        "residual_in": (lambda m, i: m.model.layers[i], "input"),
        "residual": (lambda m, i: m.model.layers[i], "output"),
    },
    "gpt2": {
        "heads": (lambda m, i: m.transformer.h[i].attn.c_proj, "input"),
        "attn_out": (lambda m, i: m.transformer.h[i].attn.c_proj, "output"),
        "mlp_out": (lambda m, i: m.transformer.h[i].mlp, "output"),
        "residual_in": (lambda m, i: m.transformer.h[i], "input"),
        "residual": (lambda m, i: m.transformer.h[i], "output"),
    },
}


def hand_hooked(model, tok, family: str, site: str, text: str) -> torch.Tensor:
    """``[L, T, D]``: what a plain hook at the site's module sees, one text run alone."""
    locate, which = HAND[family][site]
    n = model.config.num_hidden_layers
    got: dict[int, torch.Tensor] = {}
    handles = []
    for i in range(n):
        module = locate(model, i)
        if which == "input":
            handles.append(module.register_forward_pre_hook(
                lambda mod, args, kwargs, i=i: got.__setitem__(
                    i, (args[0] if args else kwargs["hidden_states"])[0].detach().clone()
                ),
                with_kwargs=True,
            ))  # fmt: skip
        else:
            handles.append(module.register_forward_hook(
                lambda mod, args, out, i=i: got.__setitem__(i, _first(out)[0].detach().clone())
            ))  # fmt: skip
    try:
        with torch.no_grad():
            model(input_ids=torch.tensor([tok(text)["input_ids"]]))
    finally:
        for h in handles:
            h.remove()
    return torch.stack([got[i] for i in range(n)])


def test_the_hand_written_sites_cover_the_table():
    for family in HAND:
        assert set(HAND[family]) == set(DEFAULT_SITES)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("site", list(DEFAULT_SITES))
@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_capture_at_every_site_equals_a_hand_written_hook(family, site, padding_side):
    model, tok = tiny_model(family)
    src = HFActivationSource(site=site, batch_size=2, padding_side=padding_side, progress=False, reuse_mb=0)
    got = capture_all(src, model, tok, TEXTS, site=site, adapter=GenericAdapter())
    info = GenericAdapter().site_info(model, site)
    for text, acts in zip(TEXTS, got):
        want = hand_hooked(model, tok, family, site, text)
        assert acts.acts.shape == want.shape
        assert acts.acts.shape[-1] == info.width
        torch.testing.assert_close(acts.acts, want)


def test_residual_in_of_a_layer_is_the_residual_leaving_the_one_before():
    model, tok = tiny_model("llama")
    src = HFActivationSource(batch_size=2, progress=False, reuse_mb=0)
    res_in = capture_all(src, model, tok, TEXTS, layers=[1], site="residual_in", adapter=GenericAdapter())
    res = capture_all(src, model, tok, TEXTS, layers=[0], site="residual", adapter=GenericAdapter())
    for a, b in zip(res_in, res):
        torch.testing.assert_close(a.acts, b.acts, rtol=0, atol=0)
    # ... and the hidden-size sites are different tensors
    mlp = capture_all(src, model, tok, TEXTS, layers=[0], site="mlp_out", adapter=GenericAdapter())
    attn = capture_all(src, model, tok, TEXTS, layers=[0], site="attn_out", adapter=GenericAdapter())
    assert not torch.allclose(mlp[0].acts, res[0].acts)
    assert not torch.allclose(mlp[0].acts, attn[0].acts)


def test_kept_activations_are_served_only_to_the_same_site(monkeypatch):
    monkeypatch.setattr(reuse, "MIN_TOKENS", 0)
    seen: list[list[int]] = []
    original = hf_module.HFActivationSource._forward_batch

    def counting(self, model, tokenizer, indices, *args, **kwargs):
        seen.append(list(indices))
        return original(self, model, tokenizer, indices, *args, **kwargs)

    monkeypatch.setattr(hf_module.HFActivationSource, "_forward_batch", counting)
    model, tok = tiny_model("llama")
    src = HFActivationSource(batch_size=8, progress=False)
    res = capture_all(src, model, tok, TEXTS, site="residual", adapter=GenericAdapter())
    assert len(src.memo) == len(TEXTS)
    again = capture_all(src, model, tok, TEXTS, site="residual", adapter=GenericAdapter())
    assert len(seen) == 1  # served from memory
    mlp = capture_all(src, model, tok, TEXTS, site="mlp_out", adapter=GenericAdapter())
    assert len(seen) == 2  # same width, other site: run again, not served the residual
    for a, b, m, text in zip(res, again, mlp, TEXTS):
        torch.testing.assert_close(a.acts, b.acts, rtol=0, atol=0)
        torch.testing.assert_close(m.acts, hand_hooked(model, tok, "llama", "mlp_out", text))


# -- bad input -------------------------------------------------------------------------------
def test_an_unknown_site_is_an_error_naming_the_known_sites():
    model, tok = tiny_model("llama")
    src = HFActivationSource(progress=False)
    with pytest.raises(ConfigError, match="unknown site 'mlp'.*'heads'.*'mlp_out'"):
        capture_all(src, model, tok, TEXTS, site="mlp", adapter=GenericAdapter())
    modules = [GenericAdapter().layer_module(model, 0)]
    with pytest.raises(ConfigError, match="unknown site 'mlp'.*site_spec"):
        SiteTaps(modules, "mlp", torch.float32)
    with pytest.raises(ValueError, match="unknown site 'mlp'.*'residual_in'"):
        ModelShape("x", 2, 4, 8, 32, 100).site("mlp")


@pytest.mark.parametrize("bad", ["", " heads"])
def test_a_site_that_is_not_a_name_is_refused_in_the_config(bad):
    with pytest.raises(ConfigError, match="site must be the name of a site"):
        HFActivationSource(site=bad)


def test_a_pipeline_with_an_unknown_site_fails_at_fit_before_any_forward(monkeypatch):
    model, tok = tiny_model("llama")
    ran = []
    monkeypatch.setattr(hf_module.HFActivationSource, "_forward_batch", lambda *a, **k: ran.append(1))
    pipe = AlignmentPipeline.from_preset("tae", source={"site": "ffn_in", "progress": False})
    assert pipe.source.config.site == "ffn_in"  # a name: checked against the table at fit time
    with pytest.raises(ConfigError, match="unknown site 'ffn_in'.*'mlp_out'"):
        pipe.fit(model, tok, rows())
    assert ran == []


def test_the_config_describes_every_site_of_the_table():
    text = HFSourceConfig.model_fields["site"].description
    for name in DEFAULT_SITES:
        assert f"`{name}`" in text


# -- a pipeline at another site --------------------------------------------------------------
def rows(n: int = 8) -> list[dict]:
    out = []
    for g in range(n):
        q = f"Q: is {chr(97 + g)} big? A:"
        out.append({"prompt": q, "completion": f" yes {g} .", "label": 1, "group": f"q{g}"})
        out.append({"prompt": q, "completion": f" no {g} wait .", "label": 0, "group": f"q{g}"})
    return out


def _pipeline(site: str, **roles) -> AlignmentPipeline:
    cfg = {
        **TAE_PRESET,
        "source": {"type": "hf", "config": {"site": site, "progress": False}},
        "prober": {"type": "logistic", "config": {"top_k": 2}},
        **roles,
    }
    return AlignmentPipeline.from_config(cfg)


def test_fit_and_apply_at_mlp_out_edit_the_mlp_output(tmp_path):
    model, tok = tiny_model("llama")
    pipe = _pipeline("mlp_out", estimator=None, intervener={"type": "fixed", "config": {"alpha": 4.0}})
    pipe.fit(model, tok, rows())
    plan = pipe.intervener.plan("last")
    assert pipe.targets_.site == plan.site == "mlp_out"
    assert all(int(u) == 0 for u in pipe.targets_.units)  # one unit of hidden values per layer
    layer = plan.layers[0].layer
    expected = (plan.layers[0].directions * plan.layers[0].scales[:, None]).sum(0)

    prompt = rows()[0]["prompt"]
    src = HFActivationSource(progress=False, reuse_mb=0)

    def at(site):
        return capture_all(src, model, tok, [prompt], layers=[layer], site=site, adapter=GenericAdapter())[0].acts[0]

    before_mlp, before_in = at("mlp_out"), at("residual_in")
    with pipe.apply(model):
        after_mlp, after_in = at("mlp_out"), at("residual_in")
    # The edit is written at the MLP output of the planned layer, at the last position only;
    # what enters that layer is untouched.
    torch.testing.assert_close(after_in, before_in, rtol=0, atol=0)
    torch.testing.assert_close(after_mlp[:-1], before_mlp[:-1], rtol=0, atol=0)
    torch.testing.assert_close(after_mlp[-1] - before_mlp[-1], expected, rtol=1e-4, atol=1e-5)

    loaded = AlignmentPipeline.load(pipe.save(tmp_path / "p"))
    assert loaded.targets_.site == "mlp_out"
    enc = tok(prompt, return_tensors="pt")
    with torch.no_grad():
        with pipe.apply(model):
            a = model(**enc).logits
        with loaded.apply(model):
            b = model(**enc).logits
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_the_tae_preset_fits_and_applies_at_attn_out():
    model, tok = tiny_model("llama")
    pipe = _pipeline("attn_out").fit(model, tok, rows())
    assert pipe.targets_.site == pipe.intervener.plan().site == "attn_out"
    enc = tok(rows()[0]["prompt"], return_tensors="pt")
    with torch.no_grad():
        plain = model(**enc).logits
        with pipe.apply(model):
            edited = model(**enc).logits
        after = model(**enc).logits
    assert not torch.allclose(edited[0, -1], plain[0, -1])
    torch.testing.assert_close(edited[0, :-1], plain[0, :-1], rtol=0, atol=0)
    torch.testing.assert_close(after, plain, rtol=0, atol=0)


def test_a_fit_frees_the_activations_its_source_kept(monkeypatch):
    monkeypatch.setattr(reuse, "MIN_TOKENS", 0)
    seen: list[list[int]] = []
    original = hf_module.HFActivationSource._forward_batch

    def counting(self, model, tokenizer, indices, *args, **kwargs):
        seen.append(list(indices))
        return original(self, model, tokenizer, indices, *args, **kwargs)

    monkeypatch.setattr(hf_module.HFActivationSource, "_forward_batch", counting)
    model, tok = tiny_model("llama")
    data = rows()
    pipe = AlignmentPipeline.from_preset("tae", prober={"top_k": 2}, source={"progress": False})
    pipe.fit(model, tok, data)
    # The fit's later captures were served from kept activations (each text ran once) ...
    assert sorted(i for b in seen for i in b) == list(range(len(data)))
    # ... which are freed when the fit ends.
    assert len(pipe.source.memo) == 0 and pipe.source.memo.nbytes == 0

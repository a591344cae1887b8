"""Model adapters: every tiny family resolves to the right modules and shapes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tae_framework.errors import ConfigError, UnsupportedModelError
from tae_framework.models.families import (
    BUILTIN_ADAPTERS,
    FalconAdapter,
    GPT2Adapter,
    GPTNeoXAdapter,
    OPTAdapter,
)
from tae_framework.models.generic import GenericAdapter
from tae_framework.registry import Registry
from tae_framework.sources.hf import HFActivationSource, capture_all
from tae_framework.testing.models import TINY_FAMILIES, tiny_model

LLAMA_PATHS = ("model.layers.{i}.self_attn.o_proj", "model.norm")
# family -> (adapter name, head-wise module path, final norm path, head_dim); written from
# the architectures' module layouts and the configs in tae_framework/testing/models.py.
EXPECTED = {
    "llama": ("generic", *LLAMA_PATHS, 8),
    "mistral": ("generic", *LLAMA_PATHS, 8),
    "qwen2": ("generic", *LLAMA_PATHS, 8),
    "qwen3": ("generic", *LLAMA_PATHS, 16),
    "gemma": ("generic", *LLAMA_PATHS, 16),
    "gemma2": ("generic", *LLAMA_PATHS, 16),
    "gemma3_text": ("generic", *LLAMA_PATHS, 16),
    "phi3": ("generic", *LLAMA_PATHS, 8),
    "gpt2": ("gpt2", "transformer.h.{i}.attn.c_proj", "transformer.ln_f", 8),
    "gpt_neox": ("gpt_neox", "gpt_neox.layers.{i}.attention.dense", "gpt_neox.final_layer_norm", 8),
    "opt": ("opt", "model.decoder.layers.{i}.self_attn.out_proj", "model.decoder.final_layer_norm", 8),
    "falcon": ("falcon", "transformer.h.{i}.self_attention.dense", "transformer.ln_f", 8),
}
LAYER_PATHS = {
    "gpt2": "transformer.h.{i}",
    "falcon": "transformer.h.{i}",
    "gpt_neox": "gpt_neox.layers.{i}",
    "opt": "model.decoder.layers.{i}",
}
TEXT = "Q: Is the sky blue? A: Yes, mostly."


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny models run fastest on one thread (and do not fight other processes for cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_registry() -> Registry:
    reg = Registry()
    for cls in BUILTIN_ADAPTERS:
        reg.add_component(cls, "tests", "tae-framework", "test")
    return reg


def test_every_tiny_family_is_covered():
    assert set(EXPECTED) == set(TINY_FAMILIES)
    assert len(TINY_FAMILIES) >= 8


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_family_resolves_to_the_right_modules(family):
    model, tok = tiny_model(family)
    adapter = make_registry().adapter_for(model)
    name, head_path, norm_path, head_dim = EXPECTED[family]
    assert adapter.name == name
    modules = dict(model.named_modules())

    shape = adapter.shape(model)
    assert (shape.family, shape.num_layers, shape.num_heads, shape.head_dim) == (family, 2, 4, head_dim)
    assert (shape.hidden_size, shape.vocab_size) == (32, len(tok))

    layer_path = LAYER_PATHS.get(family, "model.layers.{i}")
    assert [id(m) for m in adapter.layers(model)] == [
        id(modules[layer_path.format(i=i)]) for i in range(2)
    ]
    for i in range(2):
        assert adapter.head_module(model, i) is modules[head_path.format(i=i)]
        assert adapter.site_module(model, i, "heads") is modules[head_path.format(i=i)]
        assert adapter.site_module(model, i, "residual") is modules[layer_path.format(i=i)]
    assert adapter.final_norm(model) is modules[norm_path]
    assert adapter.unembedding(model) is model.lm_head


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_captured_sites_match_independent_taps(family):
    """Head-wise capture == what the output projection receives; residual == layer output."""
    model, tok = tiny_model(family)
    adapter = make_registry().adapter_for(model)
    _, head_path, _, head_dim = EXPECTED[family]
    layer_path = LAYER_PATHS.get(family, "model.layers.{i}")
    modules = dict(model.named_modules())

    seen_in: dict[int, torch.Tensor] = {}
    seen_out: dict[int, torch.Tensor] = {}
    handles = []
    for i in range(2):
        proj = modules[head_path.format(i=i)]
        handles.append(proj.register_forward_hook(
            lambda m, args, out, i=i: seen_in.__setitem__(i, args[0].detach().clone())
        ))
        layer = modules[layer_path.format(i=i)]
        handles.append(layer.register_forward_hook(
            lambda m, args, out, i=i: seen_out.__setitem__(
                i, (out[0] if isinstance(out, tuple) else out).detach().clone()
            )
        ))
    try:
        ids = tok(TEXT, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            model(input_ids=ids)
    finally:
        for h in handles:
            h.remove()

    src = HFActivationSource(progress=False)
    heads = capture_all(src, model, tok, [TEXT], adapter=adapter)[0]
    resid = capture_all(src, model, tok, [TEXT], site="residual", adapter=adapter)[0]
    n = ids.shape[1]
    assert heads.acts.shape == (2, n, 4 * head_dim)
    assert resid.acts.shape == (2, n, 32)
    assert heads.acts.dtype == torch.float32 and heads.acts.device.type == "cpu"
    assert torch.equal(heads.input_ids, ids[0])
    for i in range(2):
        torch.testing.assert_close(heads.acts[i], seen_in[i][0], rtol=0, atol=1e-6)
        torch.testing.assert_close(resid.acts[i], seen_out[i][0], rtol=0, atol=1e-6)
    # A second, fully independent route for the residual stream: HF's own hidden states.
    with torch.no_grad():
        hidden = model(input_ids=ids, output_hidden_states=True).hidden_states
    torch.testing.assert_close(resid.acts[0], hidden[1][0], rtol=0, atol=1e-6)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_final_norm_and_unembedding_reproduce_the_logits(family):
    model, tok = tiny_model(family)
    adapter = make_registry().adapter_for(model)
    ids = tok(TEXT, return_tensors="pt")["input_ids"]
    resid = capture_all(HFActivationSource(progress=False), model, tok, [TEXT], layers=[1],
                        site="residual", adapter=adapter)[0]
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0]
        lens = adapter.unembedding(model)(adapter.final_norm(model)(resid.acts[0]))
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:  # Gemma 2/3 squash the final logits
        lens = cap * torch.tanh(lens / cap)
    torch.testing.assert_close(lens, logits, rtol=0, atol=1e-5)


def test_family_adapters_only_match_their_family():
    llama, _ = tiny_model("llama")
    gpt2, _ = tiny_model("gpt2")
    for cls in (GPT2Adapter, GPTNeoXAdapter, OPTAdapter, FalconAdapter):
        assert not cls.matches(llama)
        assert "'llama'" in cls.explain_mismatch(llama)
    assert GPT2Adapter.matches(gpt2)
    assert GPT2Adapter.explain_mismatch(gpt2) == ""
    assert GenericAdapter.matches(gpt2)  # the generic rules resolve GPT-2 too
    assert GPT2Adapter.priority > GenericAdapter.priority


def test_generic_adapter_resolves_the_override_families_the_same_way():
    for family in ("gpt2", "gpt_neox", "opt", "falcon"):
        model, _ = tiny_model(family)
        family_adapter = make_registry().adapter_for(model)
        generic = GenericAdapter()
        assert generic.shape(model) == family_adapter.shape(model)
        for i in range(2):
            assert generic.head_module(model, i) is family_adapter.head_module(model, i)
        assert generic.final_norm(model) is family_adapter.final_norm(model)


def test_opt_with_projected_embeddings_unembeds_through_project_out():
    model, tok = tiny_model("opt", word_embed_proj_dim=16)
    adapter = make_registry().adapter_for(model)
    head = adapter.unembedding(model)
    assert isinstance(head, nn.Sequential)
    assert head[0] is model.model.decoder.project_out and head[1] is model.lm_head
    ids = tok(TEXT, return_tensors="pt")["input_ids"]
    resid = capture_all(HFActivationSource(progress=False), model, tok, [TEXT], layers=[1],
                        site="residual", adapter=adapter)[0]
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0]
        lens = head(adapter.final_norm(model)(resid.acts[0]))
    torch.testing.assert_close(lens, logits, rtol=0, atol=1e-5)


def test_shape_reads_no_weight_values_meta_model():
    from transformers import AutoModelForCausalLM

    model, _ = tiny_model("qwen3")
    with torch.device("meta"):
        meta = AutoModelForCausalLM.from_config(model.config)
    assert next(meta.parameters()).device.type == "meta"
    adapter = make_registry().adapter_for(meta)
    assert adapter.shape(meta) == adapter.shape(model)
    gpt2, _ = tiny_model("gpt2")
    with torch.device("meta"):
        meta2 = AutoModelForCausalLM.from_config(gpt2.config)
    assert GPT2Adapter().shape(meta2).head_dim == 8


def test_head_dim_disagreeing_with_the_projection_is_an_error():
    model, _ = tiny_model("qwen3", fresh=True)
    model.config.head_dim = 8  # the modules were built with head_dim 16: o_proj takes 64
    with pytest.raises(UnsupportedModelError) as err:
        GenericAdapter().shape(model)
    msg = str(err.value)
    assert "takes 64 features" in msg and "num_attention_heads=4 x head_dim=8" in msg
    assert not GenericAdapter.matches(model)


def test_layer_count_disagreeing_with_config_is_explained():
    model, _ = tiny_model("llama", fresh=True)
    model.config.num_hidden_layers = 3
    assert GenericAdapter.explain_mismatch(model) == (
        "no ModuleList of 3 decoder layers found (config.num_hidden_layers=3)"
    )
    gpt2, _ = tiny_model("gpt2", fresh=True)
    gpt2.config.n_layer = 5
    reason = GPT2Adapter.explain_mismatch(gpt2)
    assert "no ModuleList of 5 decoder layers" in reason and "transformer.h has 2" in reason


class _Block(nn.Module):
    def __init__(self, attn_name: str, proj_name: str):
        super().__init__()
        inner = nn.Module()
        inner.add_module(proj_name, nn.Linear(8, 8))
        self.add_module(attn_name, inner)


class _Custom(nn.Module):
    """A home-made model with a config but its own module names."""

    def __init__(self, attn_name="mixer", proj_name="o_proj"):
        super().__init__()
        from types import SimpleNamespace

        self.config = SimpleNamespace(
            num_hidden_layers=2, num_attention_heads=2, hidden_size=8, vocab_size=10, model_type="custom"
        )
        self.blocks = nn.ModuleList([_Block(attn_name, proj_name) for _ in range(2)])
        self.head = nn.Linear(8, 10)

    def get_output_embeddings(self):
        return self.head


def _unsupported_message(model) -> str:
    with pytest.raises(UnsupportedModelError) as err:
        make_registry().adapter_for(model)
    msg = str(err.value)
    assert "tae_register_model_adapters" in msg
    return msg


def test_unsupported_plain_module():
    msg = _unsupported_message(nn.Sequential(nn.Linear(4, 4)))
    assert "generic: Sequential has no `config`" in msg


def test_unsupported_custom_attention_name():
    msg = _unsupported_message(_Custom(attn_name="mixer"))
    assert "layer 0 (_Block) has no attention module among self_attn/attn/attention/self_attention" in msg


def test_unsupported_layers_found_only_by_search_without_attention():
    model = _Custom(attn_name="mixer")
    model.stack = model.blocks  # not a known path: found by the generic search only
    del model.blocks
    msg = _unsupported_message(model)
    assert "stack hold 2 modules but none has a child among self_attn/attn/attention" in msg


def test_custom_model_with_standard_names_resolves():
    model = _Custom(attn_name="attn", proj_name="out_proj")
    adapter = make_registry().adapter_for(model)
    assert adapter.name == "generic"
    assert adapter.head_module(model, 1) is model.blocks[1].attn.out_proj
    assert adapter.final_norm(model) is None
    assert adapter.shape(model).head_dim == 4


def test_unsupported_custom_projection_name():
    msg = _unsupported_message(_Custom(attn_name="attn", proj_name="proj"))
    assert "layer 0 has no attention output projection among o_proj/c_proj/dense/out_proj" in msg


def test_unsupported_bert_models():
    from transformers import BertConfig, BertForMaskedLM, BertLMHeadModel

    cfg = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
           "intermediate_size": 64, "vocab_size": 100}
    masked = BertForMaskedLM(BertConfig(**cfg))
    assert "not a causal (generative) LM" in _unsupported_message(masked)
    causal = BertLMHeadModel(BertConfig(is_decoder=True, **cfg))
    msg = _unsupported_message(causal)
    assert "layer 0 has no attention output projection among o_proj/c_proj/dense/out_proj" in msg
    assert "BertAttention" in msg
    with pytest.raises(UnsupportedModelError, match="tae_register_model_adapters"):
        GenericAdapter().layers(causal) and GenericAdapter().head_module(causal, 0)


def test_resolve_layers_validates_indices():
    model, _ = tiny_model("llama")
    adapter = GenericAdapter()
    assert adapter.resolve_layers(model) == [0, 1]
    assert adapter.resolve_layers(model, [1, 0]) == [1, 0]
    assert adapter.resolve_layers(model, torch.tensor([1])) == [1]
    for bad, text in [([2], "valid indices are 0..1"), ([-1], "valid indices are 0..1"),
                      ([0, 0], "listed twice"), ([True], "not an integer"), ([0.5], "not an integer"),
                      ([], "empty"), (1, "list of layer indices")]:
        with pytest.raises(ConfigError, match=text):
            adapter.resolve_layers(model, bad)

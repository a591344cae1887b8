"""HFActivationSource: spans, padding, output invariance, the shard cache, bad inputs."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from tae_framework.errors import ConfigError, DataError
from tae_framework.models.families import BUILTIN_ADAPTERS, GPT2Adapter
from tae_framework.models.generic import GenericAdapter
from tae_framework.registry import Registry
from tae_framework.sources import hf as hf_module
from tae_framework.sources.hf import (
    CacheWarning,
    HFActivationSource,
    SiteTaps,
    capture_all,
    char_span_to_token_span,
)
from tae_framework.testing.models import tiny_model

TEXTS = [
    "Q: Is the sky blue? A: Yes.",
    "Q: 2+2? A: 4",
    "Q: Name a colour that is not red. A: Green, or perhaps blue.",
    "Q: Hi A: Hello there",
    "Q: Why not? A: Because.",
]


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny models run fastest on one thread (and do not fight other processes for cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def answer_spans(texts):
    return [(t.index("A: ") + 3, len(t)) for t in texts]


def adapter_for(model):
    reg = Registry()
    for cls in BUILTIN_ADAPTERS:
        reg.add_component(cls, "tests", "tae-framework", "test")
    return reg.adapter_for(model)


def run(model, tok, texts=TEXTS, spans=None, **kw):
    capture_kw = {k: kw.pop(k) for k in ("layers", "site") if k in kw}
    src = HFActivationSource(progress=False, **kw)
    return capture_all(src, model, tok, texts, spans, adapter=adapter_for(model), **capture_kw)


def tap_count(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


class ForwardCounter:
    """Counts calls of the model's forward (a test-side tap, removed on exit)."""

    def __init__(self, model):
        self.model, self.calls = model, 0

    def __enter__(self):
        self.handle = self.model.register_forward_pre_hook(lambda *a: setattr(self, "calls", self.calls + 1))
        return self

    def __exit__(self, *exc):
        self.handle.remove()


# -- spans --------------------------------------------------------------------------
def test_char_span_to_token_span_overlap_rule():
    # <bos> "Q" ":" " A" ":" " y" "e" "s"  (offsets written by hand)
    offsets = [(0, 0), (0, 1), (1, 2), (2, 4), (4, 5), (5, 7), (7, 8), (8, 9)]
    assert char_span_to_token_span(offsets, 6, 9) == (5, 8)  # "yes"
    assert char_span_to_token_span(offsets, 5, 9) == (5, 8)  # " yes"
    assert char_span_to_token_span(offsets, 0, 9) == (1, 8)  # BOS (0, 0) never belongs
    assert char_span_to_token_span(offsets, 3, 6) == (3, 6)  # partial overlaps at both ends
    assert char_span_to_token_span(offsets, 8, 9) == (7, 8)
    with pytest.raises(DataError, match="empty or reversed"):
        char_span_to_token_span(offsets, 4, 4)
    with pytest.raises(DataError, match="empty or reversed"):
        char_span_to_token_span(offsets, 5, 2)
    with pytest.raises(DataError, match="no token overlaps"):
        char_span_to_token_span(offsets, 9, 12)


def test_answer_tokens_with_space_at_the_end_of_the_prompt_or_start_of_the_answer():
    model, tok = tiny_model("llama")
    # The tiny tokenizer glues a space to the next character: " y" is one token.
    cases = [
        ("Q: hi A: ", "yes", [" y", "e", "s"]),  # prompt ends with the space
        ("Q: hi A:", " yes", [" y", "e", "s"]),  # answer starts with the space
        ("Q: hi A:", "yes", ["y", "e", "s"]),  # no space at all
        ("Q: hi A:  ", "yes", [" y", "e", "s"]),  # the first of two spaces stays in the prompt
    ]
    texts = [p + a for p, a, _ in cases]
    spans = [(len(p), len(p) + len(a)) for p, a, _ in cases]
    acts = run(model, tok, texts, spans, batch_size=4)
    for a, (_, _, expected) in zip(acts, cases):
        assert tok.convert_ids_to_tokens(a.input_ids[a.span[0]:a.span[1]].tolist()) == expected
        assert a.answer.shape == (2, 3, 32)
    # "Q: hi A:  yes": <bos> Q : " h" i " A" : " " " y" e s -> the answer is tokens 8..11
    assert acts[3].span == (8, 11)


def test_spans_none_means_every_token_including_bos():
    model, tok = tiny_model("llama")
    (a,) = run(model, tok, ["ab c"])
    assert tok.convert_ids_to_tokens(a.input_ids.tolist()) == ["<bos>", "a", "b", " c"]
    assert a.span == (0, 4)


def test_empty_or_misplaced_span_names_the_text():
    model, tok = tiny_model("llama")
    texts = ["Q: a A: b", "Q: c A: d"]
    with pytest.raises(DataError, match=r"text 1 \('Q: c A: d'\).*empty or reversed"):
        run(model, tok, texts, [(8, 9), (8, 8)])
    with pytest.raises(DataError, match=r"text 0 .*ends after the text \(9 characters\)"):
        run(model, tok, texts, [(8, 12), (8, 9)])
    with pytest.raises(DataError, match="got 1 answer spans for 2 texts"):
        run(model, tok, texts, [(8, 9)])
    with pytest.raises(DataError, match="answer span of text 0"):
        run(model, tok, texts, [(8.0, 9), (8, 9)])
    with pytest.raises(DataError, match="answer span of text 1"):
        run(model, tok, texts, [(8, 9), (8, 9, 10)])
    # numpy integers and generators are fine
    import numpy as np

    acts = run(model, tok, iter(texts), (np.array([8, 9]) for _ in texts))
    assert [a.span for a in acts] == [(6, 7), (6, 7)]  # <bos> Q : " a" " A" : " b"


# -- outputs unchanged ------------------------------------------------------------------
@pytest.mark.parametrize("family", ["llama", "gpt2", "falcon"])
@pytest.mark.parametrize("site", ["heads", "residual"])
def test_capture_leaves_logits_unchanged(family, site):
    model, tok = tiny_model(family)
    adapter = adapter_for(model)
    enc = tok(TEXTS[2], return_tensors="pt")
    taps_before = tap_count(model)
    with torch.no_grad():
        before = model(**enc).logits
        modules = [adapter.site_module(model, i, site) for i in range(2)]
        with SiteTaps(modules, site, torch.float32) as taps:
            during = model(**enc).logits
            assert tap_count(model) == taps_before + 2
        assert all(t is not None for t in taps.captured)
        run(model, tok, site=site, batch_size=2)
        after = model(**enc).logits
    torch.testing.assert_close(during, before, rtol=0, atol=1e-6)
    torch.testing.assert_close(after, before, rtol=0, atol=1e-6)
    assert tap_count(model) == taps_before


def test_taps_are_removed_when_the_forward_fails():
    model, _ = tiny_model("llama")
    taps_before = tap_count(model)
    modules = [GenericAdapter().head_module(model, i) for i in range(2)]
    with pytest.raises(IndexError), SiteTaps(modules, "heads", torch.float32):
        model(input_ids=torch.tensor([[10_000]]))  # id outside the vocabulary
    assert tap_count(model) == taps_before


# -- padding ------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["llama", "gpt2", "opt", "falcon", "gemma2", "gpt_neox"])
@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("site", ["heads", "residual"])
def test_batched_equals_one_by_one(family, side, site):
    model, tok = tiny_model(family)
    spans = answer_spans(TEXTS)
    single = run(model, tok, TEXTS, spans, site=site, batch_size=1)
    batched = run(model, tok, TEXTS, spans, site=site, batch_size=3, padding_side=side)
    assert [a.index for a in batched] == list(range(len(TEXTS)))
    lengths = {a.acts.shape[1] for a in batched}
    assert len(lengths) == len(TEXTS)  # the texts really have different lengths
    for b, s in zip(batched, single):
        assert b.acts.shape == s.acts.shape
        assert torch.equal(b.input_ids, s.input_ids) and b.span == s.span
        torch.testing.assert_close(b.acts, s.acts, rtol=0, atol=1e-5)


def test_left_padding_needs_position_ids_for_absolute_positions(monkeypatch):
    """GPT-2 adds learned absolute position embeddings: without position ids counted from the
    mask, left-padded rows are shifted and differ. This shows the equality test can fail."""
    model, tok = tiny_model("gpt2")
    single = run(model, tok, TEXTS[:2], batch_size=1)
    monkeypatch.setattr(
        hf_module, "_forward_kwargs",
        lambda m: {"position_ids": False, "use_cache": True, "logits_to_keep": True},
    )
    batched = run(model, tok, TEXTS[:2], batch_size=2, padding_side="left")
    assert (batched[1].acts - single[1].acts).abs().max() > 1e-3


# -- options ------------------------------------------------------------------------------
def test_layers_dtype_and_device_options():
    model, tok = tiny_model("qwen3")
    full = run(model, tok, TEXTS[:2])
    (a, _) = run(model, tok, TEXTS[:2], layers=[1], output_dtype="bfloat16")
    assert a.layers == (1,) and a.acts.shape == (1, full[0].acts.shape[1], 64)
    assert a.acts.dtype == torch.bfloat16 and a.acts.device.type == "cpu"
    torch.testing.assert_close(a.acts.float(), full[0].acts[1:], rtol=1e-2, atol=1e-2)
    (c, _unused) = run(model, tok, TEXTS[:2], layers=[1, 0], output_device="model")
    assert c.layers == (1, 0)
    torch.testing.assert_close(c.acts, full[0].acts.flip(0), rtol=0, atol=1e-6)
    assert not full[0].acts.is_inference()  # ordinary tensors, usable with autograd


def test_max_length_truncates_but_never_cuts_an_answer():
    model, tok = tiny_model("llama")
    text = "Q: hi A: yes"  # <bos> Q : " h" i " A" : " y" e s: 10 tokens, the answer is 7..10
    (a,) = run(model, tok, [text], max_length=5)
    assert a.acts.shape[1] == 5 and a.span == (0, 5)
    (b,) = run(model, tok, [text], [(9, 12)], max_length=10)
    assert b.span == (7, 10) and b.acts.shape[1] == 10
    with pytest.raises(DataError, match="max_length=9 would cut it"):
        run(model, tok, [text], [(9, 12)], max_length=9)


def test_progress_bar_can_be_on():
    model, tok = tiny_model("llama")
    src = HFActivationSource(progress=True)
    acts = capture_all(src, model, tok, TEXTS[:1], adapter=GenericAdapter())
    assert len(acts) == 1


def test_default_adapter_comes_from_the_registry(monkeypatch):
    from tae_framework import plugins

    reg = Registry()
    for cls in BUILTIN_ADAPTERS:
        reg.add_component(cls, "tests", "tae-framework", "test")
    monkeypatch.setattr(plugins, "default_registry", lambda refresh=False: reg)
    model, tok = tiny_model("gpt2")
    src = HFActivationSource(progress=False)
    (a,) = capture_all(src, model, tok, TEXTS[:1])
    (b,) = capture_all(src, model, tok, TEXTS[:1], adapter=GPT2Adapter())
    assert torch.equal(a.acts, b.acts)


# -- cache -----------------------------------------------------------------------------
def _assert_same(xs, ys):
    assert len(xs) == len(ys)
    for x, y in zip(xs, ys):
        assert x.index == y.index and x.span == y.span and x.layers == y.layers
        assert torch.equal(x.input_ids, y.input_ids)
        torch.testing.assert_close(x.acts, y.acts, rtol=0, atol=0)


def test_cache_second_call_does_not_run_the_model(tmp_path):
    model, tok = tiny_model("llama")
    spans = answer_spans(TEXTS)
    reference = run(model, tok, TEXTS, spans, batch_size=2)
    with ForwardCounter(model) as counter:
        first = run(model, tok, TEXTS, spans, batch_size=2, cache_dir=str(tmp_path))
    assert counter.calls == 3
    with ForwardCounter(model) as counter:
        second = run(model, tok, TEXTS, spans, batch_size=2, cache_dir=str(tmp_path))
    assert counter.calls == 0
    _assert_same(first, reference)
    _assert_same(second, reference)
    (folder,) = list(tmp_path.iterdir())
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["manifest.json", "shard-00000.safetensors", "shard-00001.safetensors",
                     "shard-00002.safetensors"]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["num_shards"] == 3 and manifest["description"]["site"] == "heads"


def test_cache_key_changes_with_the_request(tmp_path):
    model, tok = tiny_model("llama")
    run(model, tok, TEXTS, batch_size=2, cache_dir=str(tmp_path))
    for change in [{"layers": [0]}, {"site": "residual"}, {"output_dtype": "float16"}]:
        with ForwardCounter(model) as counter:
            run(model, tok, TEXTS, batch_size=2, cache_dir=str(tmp_path), **change)
        assert counter.calls == 3, change
    with ForwardCounter(model) as counter:
        run(model, tok, TEXTS[:4] + ["Q: Why not? A: Because!"], batch_size=2, cache_dir=str(tmp_path))
    assert counter.calls == 3
    other, _ = tiny_model("llama", seed=1)  # same architecture, different weights
    with ForwardCounter(other) as counter:
        run(other, tok, TEXTS, batch_size=2, cache_dir=str(tmp_path))
    assert counter.calls == 3


def test_cache_resumes_an_interrupted_run(tmp_path):
    model, tok = tiny_model("gpt2")
    reference = run(model, tok, TEXTS, batch_size=2)
    src = HFActivationSource(progress=False, batch_size=2, cache_dir=str(tmp_path))
    gen = src.capture(model, tok, TEXTS, adapter=GPT2Adapter())
    with ForwardCounter(model) as counter:
        first_batch = next(gen)
        gen.close()  # interrupted after one batch
    assert counter.calls == 1 and len(first_batch) == 2
    (folder,) = list(tmp_path.iterdir())
    assert sorted(p.name for p in folder.glob("shard-*")) == ["shard-00000.safetensors"]
    with ForwardCounter(model) as counter:
        resumed = run(model, tok, TEXTS, batch_size=2, cache_dir=str(tmp_path))
    assert counter.calls == 2  # only the two missing shards
    _assert_same(resumed, reference)
    assert not list(folder.glob(".*tmp*"))  # no temporary files left behind


def test_corrupted_shard_is_recomputed_with_a_warning(tmp_path):
    model, tok = tiny_model("llama")
    first = run(model, tok, TEXTS, batch_size=2, cache_dir=str(tmp_path))
    (folder,) = list(tmp_path.iterdir())
    shard = folder / "shard-00001.safetensors"
    shard.write_bytes(shard.read_bytes()[:100])  # truncated file
    with ForwardCounter(model) as counter, pytest.warns(CacheWarning, match="shard-00001"):
        again = run(model, tok, TEXTS, batch_size=2, cache_dir=str(tmp_path))
    assert counter.calls == 1
    _assert_same(again, first)
    with ForwardCounter(model) as counter, warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)
        run(model, tok, TEXTS, batch_size=2, cache_dir=str(tmp_path))
    assert counter.calls == 0  # the shard was rewritten


def test_shard_holding_other_texts_is_recomputed(tmp_path):
    model, tok = tiny_model("llama")
    run(model, tok, TEXTS, batch_size=2, cache_dir=str(tmp_path))
    (folder,) = list(tmp_path.iterdir())
    (folder / "shard-00000.safetensors").write_bytes((folder / "shard-00001.safetensors").read_bytes())
    with ForwardCounter(model) as counter, pytest.warns(CacheWarning, match="holds texts"):
        run(model, tok, TEXTS, batch_size=2, cache_dir=str(tmp_path))
    assert counter.calls == 1


# -- bad inputs -----------------------------------------------------------------------
def test_layer_out_of_range():
    model, tok = tiny_model("llama")
    with pytest.raises(ConfigError, match=r"layer 2 is out of range.*valid indices are 0\.\.1"):
        run(model, tok, layers=[0, 2])


def test_unknown_site_and_config_typos():
    model, tok = tiny_model("llama")
    with pytest.raises(ConfigError, match="unknown site 'mlp'"):
        run(model, tok, site="mlp")
    with pytest.raises(ConfigError, match="batch_sise"):
        HFActivationSource(batch_sise=2)
    with pytest.raises(ConfigError, match="padding_side"):
        HFActivationSource(padding_side="top")


def test_nan_activations_name_the_layer():
    model, tok = tiny_model("llama", fresh=True)
    with torch.no_grad():
        model.model.layers[1].self_attn.v_proj.weight.fill_(float("nan"))
    taps_before = tap_count(model)
    with pytest.raises(DataError, match="heads activations captured at layer 1 .*NaN/inf"):
        run(model, tok, TEXTS[:2])
    assert tap_count(model) == taps_before
    (ok, _) = run(model, tok, TEXTS[:2], layers=[0])  # layer 0 is still fine
    assert torch.isfinite(ok.acts).all()


def test_texts_must_be_a_list_of_strings():
    model, tok = tiny_model("llama")
    with pytest.raises(DataError, match="single string"):
        run(model, tok, "Q: a A: b")
    with pytest.raises(DataError, match="no texts"):
        run(model, tok, [])
    with pytest.raises(DataError, match="text 1 is a int"):
        run(model, tok, ["a", 3])


def test_slow_tokenizer_is_rejected():
    model, _ = tiny_model("llama")

    class Slow:
        is_fast = False

        def __call__(self, *a, **k):
            raise AssertionError("must not be called")

    with pytest.raises(ConfigError, match="not a fast tokenizer.*use_fast=True"):
        run(model, Slow(), TEXTS[:1])


def test_training_mode_warns():
    model, tok = tiny_model("llama", fresh=True)
    model.train()
    with pytest.warns(UserWarning, match="training mode"):
        run(model, tok, TEXTS[:1])

"""Capture served from memory (``reuse_mb``), forward passes stopped at the last site, and
the torch thread count of the forward passes (``num_threads``).

Values are compared with a hand-written reference: each text alone through the model with
a plain pre-hook on every layer's attention output projection, no batching, no memory.
"""

from __future__ import annotations

import pytest
import torch

from tae_framework import AlignmentPipeline
from tae_framework.models.generic import GenericAdapter
from tae_framework.sources import hf as hf_module
from tae_framework.sources import reuse
from tae_framework.sources.base import ActivationSource
from tae_framework.sources.hf import HFActivationSource, capture_all
from tae_framework.testing.models import tiny_model
from tae_framework.types import TextActivations

PROMPTS = ["Q: Is the sky blue? A:", "Q: 2+2? A:", "Q: Name a colour that is not red. A:", "Q: Hi A:"]
ANSWERS = [" Yes.", " 4", " Green, or perhaps blue.", " Hello there"]
TEXTS = [p + a for p, a in zip(PROMPTS, ANSWERS)]
SPANS = [(len(p), len(p) + len(a)) for p, a in zip(PROMPTS, ANSWERS)]


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def short_kept(monkeypatch):
    """The texts here are short: keep them although they have fewer than MIN_TOKENS."""
    monkeypatch.setattr(reuse, "MIN_TOKENS", 0)


@pytest.fixture
def forwarded(monkeypatch):
    """Texts the source runs through the model (each forward pass's indices)."""
    seen: list[list[int]] = []
    original = hf_module.HFActivationSource._forward_batch

    def counting(self, model, tokenizer, indices, *args, **kwargs):
        seen.append(list(indices))
        return original(self, model, tokenizer, indices, *args, **kwargs)

    monkeypatch.setattr(hf_module.HFActivationSource, "_forward_batch", counting)
    return seen


def reference(model, tok, text: str, layers) -> torch.Tensor:
    """``[L, T, H*d]``: the o_proj inputs of one text, run alone through the whole model."""
    got = {}
    handles = [
        model.model.layers[layer].self_attn.o_proj.register_forward_pre_hook(
            lambda m, args, layer=layer: got.__setitem__(layer, args[0][0].detach().clone())
        )
        for layer in layers
    ]
    try:
        with torch.no_grad():
            model(input_ids=torch.tensor([tok(text)["input_ids"]]))
    finally:
        for h in handles:
            h.remove()
    return torch.stack([got[layer] for layer in layers])


def capture(src, model, tok, texts, spans=None, layers=None):
    return capture_all(src, model, tok, texts, spans, layers, adapter=GenericAdapter())


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_repeat_prefix_and_layer_subset_are_served_from_memory(forwarded, padding_side, short_kept):
    model, tok = tiny_model("llama")
    src = HFActivationSource(batch_size=3, progress=False, padding_side=padding_side)
    full = capture(src, model, tok, TEXTS, SPANS)
    assert sorted(i for b in forwarded for i in b) == [0, 1, 2, 3]
    forwarded.clear()
    # A fit's later passes: some layers of a subset of the texts, and the prompts alone.
    sub = capture(src, model, tok, [TEXTS[3], TEXTS[1]], [SPANS[3], SPANS[1]], layers=[1])
    prompts = capture(src, model, tok, PROMPTS, layers=[0, 1])
    assert forwarded == []
    for a, i in zip(sub, (3, 1)):
        torch.testing.assert_close(a.acts, reference(model, tok, TEXTS[i], [1]), rtol=1e-5, atol=1e-6)
        assert a.span == full[i].span and a.layers == (1,)
        assert torch.equal(a.input_ids, full[i].input_ids)
    for a, p in zip(prompts, PROMPTS):
        torch.testing.assert_close(a.acts, reference(model, tok, p, [0, 1]), rtol=1e-5, atol=1e-6)
        assert a.acts.is_contiguous()
    # A text that is neither kept nor a prefix of a kept one is computed.
    new = capture(src, model, tok, [PROMPTS[0], "Q: Why? A: Because."], layers=[1])
    assert forwarded == [[1]]
    torch.testing.assert_close(new[1].acts, reference(model, tok, "Q: Why? A: Because.", [1]), rtol=1e-5, atol=1e-6)


def test_served_tensors_are_copies(forwarded, short_kept):
    model, tok = tiny_model("llama")
    src = HFActivationSource(batch_size=4, progress=False)
    first = capture(src, model, tok, TEXTS)
    expected = first[0].acts.clone()
    first[0].acts.mul_(0)  # a consumer writing into what it got
    again = capture(src, model, tok, TEXTS[:1])
    again[0].acts.add_(1)
    third = capture(src, model, tok, TEXTS[:1])
    assert len(forwarded) == 1
    assert torch.equal(third[0].acts, expected)


def test_a_weight_edit_through_data_is_not_served_stale(forwarded, short_kept):
    model, tok = tiny_model("llama", fresh=True)
    src = HFActivationSource(batch_size=4, progress=False)
    before = capture(src, model, tok, TEXTS)
    with torch.no_grad():  # .data bypasses PyTorch's version counters
        model.model.layers[0].self_attn.v_proj.weight.data[:, 0] += 0.5
    forwarded.clear()
    after = capture(src, model, tok, TEXTS[:2], layers=[1])
    assert forwarded == [[0, 1]]
    assert not torch.allclose(after[0].acts, before[0].acts[1:2])
    torch.testing.assert_close(after[0].acts, reference(model, tok, TEXTS[0], [1]), rtol=1e-5, atol=1e-6)


def test_an_edit_hook_is_not_served_unedited_activations(forwarded, short_kept):
    model, tok = tiny_model("llama")
    src = HFActivationSource(batch_size=4, progress=False)
    plain = capture(src, model, tok, TEXTS)
    forwarded.clear()
    handle = model.model.layers[0].register_forward_hook(lambda m, a, out: (out[0] * 2, *out[1:]) if isinstance(out, tuple) else out * 2)
    try:
        edited = capture(src, model, tok, TEXTS[:1], layers=[1])
    finally:
        handle.remove()
    assert forwarded == [[0]]
    assert not torch.allclose(edited[0].acts, plain[0].acts[1:2])
    forwarded.clear()
    capture(src, model, tok, TEXTS[:1], layers=[1])  # the hook is gone: served again
    assert forwarded == []


def test_budget_and_reuse_off(forwarded, short_kept):
    model, tok = tiny_model("llama")
    for kw in ({"reuse_mb": 0}, {"reuse_mb": 1e-4}):  # 0 = off; 1e-4 MB = 104 bytes, too small
        forwarded.clear()
        src = HFActivationSource(batch_size=4, progress=False, **kw)
        capture(src, model, tok, TEXTS)
        capture(src, model, tok, TEXTS)
        assert len(forwarded) == 2, kw
        assert src.memo.nbytes == 0
    src = HFActivationSource(batch_size=4, progress=False)
    capture(src, model, tok, TEXTS)
    assert src.memo.nbytes > 0
    src.memo.clear()
    capture(src, model, tok, TEXTS)
    assert len(forwarded) == 4


@pytest.mark.parametrize("site", ["heads", "residual"])
def test_the_forward_pass_stops_after_the_last_captured_site(site):
    model, tok = tiny_model("llama")
    later = []
    src = HFActivationSource(batch_size=2, progress=False, reuse_mb=0)
    handles = [
        model.model.layers[1].register_forward_pre_hook(lambda *a: later.append("layer 1")),
        model.model.norm.register_forward_pre_hook(lambda *a: later.append("norm")),
    ]
    try:
        acts = capture_all(src, model, tok, TEXTS, layers=[0], site=site, adapter=GenericAdapter())
        assert later == []  # nothing after layer 0 ran
        full = capture_all(src, model, tok, TEXTS, site=site, adapter=GenericAdapter())
        assert "layer 1" in later
    finally:
        for h in handles:
            h.remove()
    for a, f in zip(acts, full):
        assert torch.equal(a.acts[0], f.acts[0])
    if site == "heads":
        for a, text in zip(acts, TEXTS):
            torch.testing.assert_close(a.acts, reference(model, tok, text, [0]), rtol=1e-5, atol=1e-6)


def test_num_threads_applies_to_the_forward_pass_only():
    model, tok = tiny_model("llama")
    seen = []
    handle = model.register_forward_pre_hook(lambda *a: seen.append(torch.get_num_threads()))
    torch.set_num_threads(2)
    try:
        src = HFActivationSource(batch_size=2, progress=False, num_threads=1, reuse_mb=0)
        batches = src.capture(model, tok, TEXTS, layers=[0], adapter=GenericAdapter())
        first = next(batches)
        assert torch.get_num_threads() == 2  # the caller's setting between batches
        acts = first + [a for b in batches for a in b]
        assert torch.get_num_threads() == 2
        default = capture(HFActivationSource(batch_size=2, progress=False, reuse_mb=0), model, tok, TEXTS[:1], layers=[0])
    finally:
        handle.remove()
        torch.set_num_threads(1)
    assert seen == [1, 1, 2]
    for a, text in zip(acts, TEXTS):
        torch.testing.assert_close(a.acts, reference(model, tok, text, [0]), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(default[0].acts, acts[0].acts, rtol=1e-5, atol=1e-6)


def test_a_short_capture_is_not_kept_and_the_weights_not_hashed(forwarded, monkeypatch):
    model, tok = tiny_model("llama")
    hashed = []
    digest = reuse.full_weights_digest
    monkeypatch.setattr(reuse, "full_weights_digest", lambda m, refresh=False: hashed.append(1) or digest(m, refresh))
    src = HFActivationSource(batch_size=4, progress=False)
    capture(src, model, tok, TEXTS)  # about 100 tokens, under MIN_TOKENS
    capture(src, model, tok, TEXTS)
    assert (len(forwarded), hashed, src.memo.nbytes) == (2, [], 0)
    long_texts = [f"{k}: {t}" for k in range(8) for t in TEXTS]  # over MIN_TOKENS: kept, hashed once
    assert sum(len(tok(t)["input_ids"]) for t in long_texts) >= reuse.MIN_TOKENS
    capture(src, model, tok, long_texts)
    assert len(hashed) == 1 and src.memo.nbytes > 0
    capture(src, model, tok, ["Q: unrelated? A: no"])  # nothing kept could serve it: no hash
    assert len(hashed) == 1
    forwarded.clear()
    capture(src, model, tok, long_texts[:1], layers=[0])  # served: hashed to check the weights
    assert (forwarded, len(hashed)) == ([], 2)


class PlainCapture(ActivationSource):
    """A fit's reference capture: every call runs the whole model on each text alone."""

    name = "plain-reference"

    def capture(self, model, tokenizer, texts, spans=None, layers=None, site="heads", adapter=None):
        layers = list(range(model.config.num_hidden_layers)) if layers is None else [int(x) for x in layers]
        for i, text in enumerate(texts):
            enc = tokenizer(text, return_offsets_mapping=True)
            span = (0, len(enc["input_ids"]))
            if spans is not None:
                s, e = spans[i]
                hits = [k for k, (a, b) in enumerate(enc["offset_mapping"]) if b > a and a < e and b > s]
                span = (hits[0], hits[-1] + 1)
            acts = reference(model, tokenizer, text, layers)
            yield [TextActivations(i, acts, torch.tensor(enc["input_ids"]), span, tuple(layers))]


def test_a_fit_runs_the_model_once_per_text_and_saves_the_reference_fits_tensors(forwarded, tmp_path):
    model, tok = tiny_model("llama")
    rows = []
    for g in range(12):
        q = f"Q: is {chr(97 + g)} big? A:"
        rows.append({"prompt": q, "completion": f" yes {g} .", "label": 1, "group": f"q{g}"})
        rows.append({"prompt": q, "completion": f" no {g} wait .", "label": 0, "group": f"q{g}"})
    settings = {"prober": {"top_k": 3}, "intervener": {"alpha": 4.0}, "source": {"progress": False}}
    ours = AlignmentPipeline.from_preset("tae", **settings).fit(model, tok, rows)
    # Three capture passes, but the model ran once per text: the prompts and the training
    # texts were served from the first pass.
    assert sorted(i for b in forwarded for i in b) == list(range(len(rows)))
    plain = AlignmentPipeline.from_preset("tae", **settings)
    plain.source = PlainCapture()
    plain.fit(model, tok, rows)
    plain.source = ours.source
    a, b = ours.save(tmp_path / "ours"), plain.save(tmp_path / "plain")
    assert (a / "tensors.safetensors").read_bytes() == (b / "tensors.safetensors").read_bytes()

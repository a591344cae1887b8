"""The sampling protocol: seeded nucleus sampling independent of batch composition,
edits through the KV-cache generation, checkpoints and resume, bad settings."""

from __future__ import annotations

import contextlib
import json

import pytest
import torch
from tae_toxicity.sampling import SamplingConfig, nucleus_sample, sample_continuations

from tae_framework import AlignmentPipeline
from tae_framework.errors import ConfigError, DataError
from tae_framework.testing.data import toy_contrast
from tae_framework.testing.models import tiny_model

PROMPTS = [("a", "Hello there, my friend"), ("b", "The cat"), ("c", "Q: where is b? A:")]


def tokens(result):
    return {pid: [c.tokens for c in conts] for pid, conts in result.items()}


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("k", 0, "k must be a positive integer"),
        ("k", True, "k must be a positive integer"),
        ("top_p", 0.0, r"top_p must be in \(0, 1\]"),
        ("top_p", 1.5, r"top_p must be in \(0, 1\]"),
        ("temperature", 0.0, "temperature must be > 0"),
        ("max_new_tokens", 0, "generate at least one token"),
        ("batch_size", 0, "at least one sequence"),
    ],
)
def test_bad_settings_are_rejected(field, value, message):
    with pytest.raises(ConfigError, match=message):
        SamplingConfig(**{field: value})


def test_protocol_defaults():
    c = SamplingConfig()
    assert (c.k, c.top_p, c.temperature, c.max_new_tokens) == (25, 0.9, 1.0, 20)


def test_nucleus_sampling_by_inverse_cdf():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log().expand(1000, 4)
    u = (torch.arange(1000, dtype=torch.float64) + 0.5) / 1000
    # top_p 0.7 keeps {0, 1} (mass before token 2 is 0.8): renormalised 0.625 / 0.375.
    got = nucleus_sample(logits, u, top_p=0.7, temperature=1.0)
    assert torch.bincount(got, minlength=4).tolist() == [625, 375, 0, 0]
    got = nucleus_sample(logits, u, top_p=1.0, temperature=1.0)
    assert torch.bincount(got, minlength=4).tolist() == [500, 300, 150, 50]
    # temperature 0.5 squares and renormalises: 0.25/0.34, 0.09/0.34 ... with top_p 1
    sq = probs**2 / (probs**2).sum()
    got = nucleus_sample(logits, u, top_p=1.0, temperature=0.5)
    assert torch.bincount(got, minlength=4).tolist() == pytest.approx((sq * 1000).round().tolist(), abs=1)
    assert nucleus_sample(logits[:1], torch.tensor([0.999]), top_p=0.01, temperature=1.0).item() == 0


def test_same_seed_same_samples_whatever_the_batches():
    model, tok = tiny_model("llama")
    cfg = SamplingConfig(k=3, max_new_tokens=5, batch_size=4, seed=7)
    ref = sample_continuations(model, tok, PROMPTS, cfg, progress=False)
    assert list(ref) == ["a", "b", "c"] and all(len(v) == 3 for v in ref.values())
    assert len({tuple(t) for t in tokens(ref)["a"]}) > 1  # the k samples differ
    other = SamplingConfig(k=3, max_new_tokens=5, batch_size=9, seed=7)
    assert tokens(sample_continuations(model, tok, PROMPTS[::-1], other, progress=False)) == tokens(ref)
    alone = SamplingConfig(k=3, max_new_tokens=5, batch_size=1, seed=7)
    assert tokens(sample_continuations(model, tok, [PROMPTS[1]], alone, progress=False))["b"] == tokens(ref)["b"]
    reseeded = SamplingConfig(k=3, max_new_tokens=5, batch_size=4, seed=8)
    assert tokens(sample_continuations(model, tok, PROMPTS, reseeded, progress=False)) != tokens(ref)
    for conts in ref.values():
        for c in conts:
            assert c.text == tok.decode(c.tokens, skip_special_tokens=True) and len(c.tokens) <= 5


def test_edits_wrap_each_generate_call_which_uses_the_kv_cache():
    model, tok = tiny_model("llama")
    widths, entered = [], []

    @contextlib.contextmanager
    def recording_edit():
        handle = model.model.layers[0].register_forward_pre_hook(
            lambda mod, args, kwargs: widths.append((args[0] if args else kwargs["hidden_states"]).shape[:2]),
            with_kwargs=True,
        )
        entered.append(1)
        try:
            yield
        finally:
            handle.remove()

    cfg = SamplingConfig(k=2, max_new_tokens=4, batch_size=6)  # all 3 prompts x 2 samples in one batch
    sample_continuations(model, tok, PROMPTS, cfg, edit=recording_edit, progress=False)
    assert len(entered) == 1
    prompt_width = max(len(tok(t)["input_ids"]) for _, t in PROMPTS)
    assert widths[0] == (6, prompt_width)  # prefill of 6 sequences, then one token per step
    assert all(w == (6, 1) for w in widths[1:]) and 1 <= len(widths) - 1 <= 3


def test_a_fitted_pipeline_edits_the_samples_and_stays_batch_independent():
    model, tok = tiny_model("llama")
    pipe = AlignmentPipeline.from_preset("caa", intervener={"alpha": 8.0}).fit(model, tok, toy_contrast())
    edit = lambda: pipe.apply(model, "last")  # noqa: E731
    cfg = SamplingConfig(k=2, max_new_tokens=5, batch_size=6)
    edited = sample_continuations(model, tok, PROMPTS, cfg, edit=edit, progress=False)
    plain = sample_continuations(model, tok, PROMPTS, cfg, progress=False)
    assert tokens(edited) != tokens(plain)
    one = SamplingConfig(k=2, max_new_tokens=5, batch_size=1)
    assert tokens(sample_continuations(model, tok, PROMPTS, one, edit=edit, progress=False)) == tokens(edited)


def test_end_of_sequence_cuts_continuations(tmp_path):
    model, tok = tiny_model("llama", fresh=True)
    model.generation_config.eos_token_id = list(range(model.config.vocab_size))  # every token ends
    out = sample_continuations(model, tok, PROMPTS[:1], SamplingConfig(k=2, max_new_tokens=4), progress=False)
    assert [(c.text, c.tokens, c.empty) for c in out["a"]] == [("", [], True)] * 2


def test_resume_after_an_interruption_gives_the_same_samples(tmp_path):
    model, tok = tiny_model("llama")
    cfg = SamplingConfig(k=2, max_new_tokens=4, batch_size=2)  # 3 batches of one prompt
    ref = sample_continuations(model, tok, PROMPTS, cfg, progress=False)
    ckpt = tmp_path / "samples.jsonl"
    calls = []

    @contextlib.contextmanager
    def failing_second_batch():
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        yield

    with pytest.raises(KeyboardInterrupt):
        sample_continuations(model, tok, PROMPTS, cfg, edit=failing_second_batch, checkpoint=ckpt, progress=False)
    lines = ckpt.read_text().splitlines()
    assert json.loads(lines[0])["header"] == cfg.settings() and len(lines) == 1 + 2
    with ckpt.open("a") as fh:
        fh.write('{"prompt_id": "b", "sam')  # an interrupted write
    calls.clear()
    counting = contextlib.nullcontext
    resumed = sample_continuations(model, tok, PROMPTS, cfg, checkpoint=ckpt, progress=False,
                                   edit=lambda: (calls.append(1), counting())[1])
    assert len(calls) == 2 and tokens(resumed) == tokens(ref)
    assert len(ckpt.read_text().splitlines()) == 1 + 6
    calls.clear()
    sample_continuations(model, tok, PROMPTS, cfg, checkpoint=ckpt, progress=False,
                         edit=lambda: (calls.append(1), counting())[1])
    assert calls == []  # everything was already there
    with pytest.raises(DataError, match="written with sampling settings.*another checkpoint path"):
        sample_continuations(model, tok, PROMPTS, SamplingConfig(k=2, max_new_tokens=4, seed=1),
                             checkpoint=ckpt, progress=False)


def test_bad_prompts():
    model, tok = tiny_model("llama")
    with pytest.raises(DataError, match="appears twice"):
        sample_continuations(model, tok, [("a", "x"), ("a", "y")], SamplingConfig(k=1), progress=False)
    with pytest.raises(DataError, match="has no text"):
        sample_continuations(model, tok, [("a", "")], SamplingConfig(k=1), progress=False)

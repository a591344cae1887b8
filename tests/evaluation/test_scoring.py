"""Model-side scoring on a tiny random Llama: answer log-probs, greedy generation, CE / KL."""

from __future__ import annotations

import contextlib
import json

import pytest
import torch

from tae_framework.errors import DataError
from tae_framework.evaluation.scoring import (
    answer_logprobs,
    answer_token_mask,
    greedy_generate,
    load_heldout_texts,
    side_effects,
)
from tae_framework.testing.models import tiny_model

PROMPTS = ["Q: Is the sky blue? A:", "Q: 2+2? A:", "Q: Where is Paris, the capital of France? A:"]
ANSWERS = [" Yes, it is.", " 4", " In France."]


@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama", seed=3)


@contextlib.contextmanager
def o_proj_shift(model, strength: float, mask: torch.Tensor | None = None):
    """Add ``strength`` * a fixed vector to layer 0's o_proj input (at ``mask`` positions)."""
    o_proj = model.model.layers[0].self_attn.o_proj
    vec = torch.linspace(-1.0, 1.0, o_proj.in_features)

    def pre_hook(module, args):
        (x,) = args
        delta = strength * vec.to(x.dtype)
        if mask is None:
            return (x + delta,)
        return (x + delta * mask[..., None].to(x.dtype),)

    handle = o_proj.register_forward_pre_hook(pre_hook)
    try:
        yield
    finally:
        handle.remove()


def reference_logprob(model, tokenizer, prompt: str, answer: str) -> float:
    """Straightforward one-text implementation: tokens after len(prompt) characters."""
    enc = tokenizer(prompt + answer, return_offsets_mapping=True)
    ids = torch.tensor([enc["input_ids"]])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0].float(), -1)
    total = 0.0
    for t, (s, e) in enumerate(enc["offset_mapping"]):
        if e > len(prompt) and e > s:
            total += float(logp[t - 1, ids[0, t]])
    return total


# -- answer log-probabilities ------------------------------------------------------------
def test_answer_tokens_are_found_from_offsets(llama):
    _, tok = llama
    ids, flags = answer_token_mask(tok, "Q: hi A:", " yes")
    pieces = tok.convert_ids_to_tokens(ids)
    # the tiny tokenizer glues a space to the next character
    assert pieces == ["<bos>", "Q", ":", " h", "i", " A", ":", " y", "e", "s"]
    assert flags == [False] * 7 + [True] * 3


def test_answer_logprobs_match_a_direct_computation(llama):
    model, tok = llama
    got = answer_logprobs(model, tok, PROMPTS, ANSWERS, batch_size=1)
    want = [reference_logprob(model, tok, p, a) for p, a in zip(PROMPTS, ANSWERS)]
    assert got.tolist() == pytest.approx(want, abs=1e-4)
    assert (got < 0).all()


def test_answer_logprobs_batched_equals_one_by_one(llama):
    model, tok = llama
    one = answer_logprobs(model, tok, PROMPTS, ANSWERS, batch_size=1)
    batched = answer_logprobs(model, tok, PROMPTS, ANSWERS, batch_size=3)
    two = answer_logprobs(model, tok, PROMPTS, ANSWERS, batch_size=2)
    torch.testing.assert_close(batched, one, atol=1e-4, rtol=0)
    torch.testing.assert_close(two, one, atol=1e-4, rtol=0)


def test_edit_receives_the_answer_span_mask(llama):
    model, tok = llama
    seen = []

    def edit(mask):
        seen.append(mask.clone())
        return contextlib.nullcontext()

    answer_logprobs(model, tok, PROMPTS, ANSWERS, batch_size=3, edit=edit)
    (mask,) = seen
    assert mask.dtype == torch.bool and mask.shape[0] == 3
    # rows are sorted longest first; each row marks exactly its answer's characters
    # (one token per character with this tokenizer, spaces glued to the next one)
    counts = sorted(int(r.sum()) for r in mask)
    assert counts == sorted(len(a) - a.count(" ") for a in ANSWERS)
    for row in mask:
        pos = row.nonzero().flatten()
        assert (pos.diff() == 1).all()  # one contiguous span


def test_edit_changes_scores_only_when_it_has_strength(llama):
    model, tok = llama
    base = answer_logprobs(model, tok, PROMPTS, ANSWERS)
    zero = answer_logprobs(model, tok, PROMPTS, ANSWERS, edit=lambda m: o_proj_shift(model, 0.0, m))
    strong = answer_logprobs(
        model, tok, PROMPTS, ANSWERS, edit=lambda m: o_proj_shift(model, 3.0, m)
    )
    torch.testing.assert_close(zero, base)
    # Edits sit on the answer positions, so they change the prediction of every answer
    # token but the first (predicted from the prompt's last position): the one-token
    # answer " 4" keeps its score, the others change.
    assert strong[1] == pytest.approx(float(base[1]), abs=1e-5)
    assert abs(strong[0] - base[0]) > 1e-3 and abs(strong[2] - base[2]) > 1e-3


def test_answer_logprobs_bad_input(llama):
    model, tok = llama
    with pytest.raises(DataError, match="2 prompts but 1 answers"):
        answer_logprobs(model, tok, PROMPTS[:2], ANSWERS[:1])
    with pytest.raises(DataError, match="no tokens"):
        answer_logprobs(model, tok, ["Q: x A:"], [""])


# -- generation --------------------------------------------------------------------------
def manual_greedy(model, tok, prompt: str, n: int) -> str:
    """Argmax loop without cache, stopping at eos."""
    ids = tok(prompt)["input_ids"]
    new: list[int] = []
    with torch.no_grad():
        for _ in range(n):
            nxt = int(model(torch.tensor([ids + new])).logits[0, -1].argmax())
            if nxt == tok.eos_token_id:
                break
            new.append(nxt)
    return tok.decode(new, skip_special_tokens=True)


def test_greedy_generate_matches_a_manual_argmax_loop(llama):
    model, tok = llama
    for n in (1, 6):
        out = greedy_generate(model, tok, PROMPTS[:1], max_new_tokens=n, batch_size=1)
        assert out[0] == manual_greedy(model, tok, PROMPTS[0], n)


def test_greedy_generate_batched_equals_one_by_one(llama):
    model, tok = llama
    one = [greedy_generate(model, tok, [p], max_new_tokens=8)[0] for p in PROMPTS]
    batched = greedy_generate(model, tok, PROMPTS, max_new_tokens=8, batch_size=3)
    assert batched == one


def test_greedy_generate_enters_the_edit_once_per_batch(llama):
    model, tok = llama
    calls = []

    def edit():
        calls.append(1)
        return contextlib.nullcontext()

    greedy_generate(model, tok, PROMPTS, max_new_tokens=2, batch_size=2, edit=edit)
    assert len(calls) == 2


# -- CE / KL -----------------------------------------------------------------------------
TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello world",
    "A somewhat longer held-out text, with commas, numbers 123 and symbols #!",
]


def test_ce_kl_zero_for_zero_strength_edit(llama):
    model, tok = llama
    res = side_effects(model, tok, TEXTS, edit=lambda m: o_proj_shift(model, 0.0, m))
    assert res["kl"] == pytest.approx(0.0, abs=1e-7)
    assert res["ce_loss"] == pytest.approx(res["ce_loss_original"], abs=1e-6)
    assert res["n_texts"] == 3


def test_ce_kl_positive_for_a_real_edit(llama):
    model, tok = llama
    res = side_effects(model, tok, TEXTS, edit=lambda m: o_proj_shift(model, 2.0, m))
    assert res["kl"] > 1e-4
    assert abs(res["ce_loss"] - res["ce_loss_original"]) > 1e-4


def test_ce_matches_the_models_own_loss(llama):
    model, tok = llama
    ids = torch.tensor([tok(TEXTS[0])["input_ids"]])
    with torch.no_grad():
        hf_loss = float(model(ids, labels=ids).loss)
    assert side_effects(model, tok, TEXTS[:1])["ce_loss"] == pytest.approx(hf_loss, abs=1e-5)


def test_side_effects_batched_equals_one_by_one(llama):
    model, tok = llama

    def edit(m):
        return o_proj_shift(model, 1.5, m)

    batched = side_effects(model, tok, TEXTS, edit=edit, batch_size=3)
    singles = [side_effects(model, tok, [t], edit=edit, batch_size=1) for t in TEXTS]
    for key in ("ce_loss", "ce_loss_original", "kl"):
        assert batched[key] == pytest.approx(sum(s[key] for s in singles) / 3, abs=1e-5)


def test_side_effects_truncates_to_max_tokens(llama):
    model, tok = llama
    long_text = "abcdefghij" * 5
    a = side_effects(model, tok, [long_text], max_tokens=8)
    b = side_effects(model, tok, [long_text[:7]])  # <bos> + 7 characters = 8 tokens
    assert a["ce_loss"] == pytest.approx(b["ce_loss"], abs=1e-6)


def test_side_effects_bad_input(llama):
    model, tok = llama
    with pytest.raises(DataError, match="at least one"):
        side_effects(model, tok, [])
    with pytest.raises(DataError, match="fewer than 2 tokens"):
        side_effects(model, tok, [""])


# -- held-out texts ----------------------------------------------------------------------
def test_load_heldout_texts_from_local_files(tmp_path):
    lines = [f"text number {i}" for i in range(20)]
    txt = tmp_path / "owt.txt"
    txt.write_text("\n".join(lines) + "\n", encoding="utf-8")
    jsonl = tmp_path / "owt.jsonl"
    jsonl.write_text("\n".join(json.dumps({"text": t}) for t in lines), encoding="utf-8")
    a = load_heldout_texts(txt, n=5, seed=0)
    assert len(a) == 5 and set(a) <= set(lines)
    assert load_heldout_texts(txt, n=5, seed=0) == a  # seeded
    assert load_heldout_texts(jsonl, n=5, seed=0) == a  # same selection from either format
    assert load_heldout_texts(txt, n=5, seed=1) != a
    assert len(load_heldout_texts(txt, n=100)) == 20
    with pytest.raises(DataError, match="does not exist"):
        load_heldout_texts(tmp_path / "missing.txt")

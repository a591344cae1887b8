"""Toxicity and side-effect metrics on hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch
from tae_toxicity.metrics import (
    breakdown,
    continuation_nll,
    distinct_n,
    expected_max_toxicity,
    perplexity,
    toxic_fraction,
    toxicity_probability,
)

from tae_framework.errors import DataError
from tae_framework.testing.models import tiny_model

# Three prompts, k = 4: one clean, one with a single toxic sample, one with a tie at 0.5.
SCORES = [
    [0.1, 0.2, 0.0, 0.3],
    [0.1, 0.9, 0.2, 0.0],
    [0.5, 0.4, 0.1, 0.2],
]


def test_expected_maximum_toxicity():
    assert expected_max_toxicity(SCORES) == pytest.approx((0.3 + 0.9 + 0.5) / 3)


def test_toxicity_probability_counts_a_tie_at_half_as_toxic():
    # prompt 2's maximum is exactly 0.5: toxic (>= 0.5); prompt 0 never reaches it.
    assert toxicity_probability(SCORES) == pytest.approx(2 / 3)
    assert toxicity_probability([[0.4999999]]) == 0.0
    assert toxicity_probability([[0.5]]) == 1.0


def test_one_toxic_continuation_among_k_makes_the_prompt_toxic():
    assert toxicity_probability([SCORES[1]]) == 1.0
    assert toxic_fraction([SCORES[1]]) == pytest.approx(1 / 4)
    assert expected_max_toxicity([SCORES[1]]) == pytest.approx(0.9)


def test_toxic_fraction_counts_continuations():
    assert toxic_fraction(SCORES) == pytest.approx(2 / 12)


def test_k_equal_one():
    scores = [[0.7], [0.2], [0.5]]
    assert expected_max_toxicity(scores) == pytest.approx(1.4 / 3)
    assert toxicity_probability(scores) == pytest.approx(2 / 3)
    assert toxic_fraction(scores) == pytest.approx(2 / 3)


def test_breakdown_by_prompt_toxicity():
    flags = [False, True, None]
    got = breakdown(expected_max_toxicity, SCORES, flags)
    assert got["all"] == pytest.approx(1.7 / 3)
    assert got["toxic"] == pytest.approx(0.9)
    assert got["nontoxic"] == pytest.approx(0.3)  # the unscored prompt counts only in "all"
    assert breakdown(toxicity_probability, SCORES, [False, False, False])["toxic"] is None
    with pytest.raises(DataError, match="one flag per prompt"):
        breakdown(toxic_fraction, SCORES, [True])


def test_all_empty_continuations_of_a_prompt():
    # A prompt whose continuations are all empty: the judge scores them (0.0 for the
    # lexicon); toxicity metrics still count the prompt, diversity and fluency skip it.
    scores = [[0.0, 0.0], [0.6, 0.1]]
    assert expected_max_toxicity(scores) == pytest.approx(0.3)
    assert toxicity_probability(scores) == pytest.approx(0.5)
    texts = [["", ""], ["a b a", "a b"]]
    # prompt 1 words: unigrams a,b,a,a,b -> 2 distinct / 5; bigrams (a b),(b a),(a b) -> 2/3
    assert distinct_n(texts, 1) == pytest.approx(2 / 5)
    assert distinct_n(texts, 2) == pytest.approx(2 / 3)
    assert distinct_n(texts, 3) == pytest.approx(1.0)  # one trigram (a b a)
    assert distinct_n([["", " "]], 1) is None
    ppl = perplexity([0.0, 0.0, 2.0], [0, 0, 2])
    assert ppl == {"ppl_mean": pytest.approx(math.e), "ppl_tokens": pytest.approx(math.e), "n_empty": 2}
    assert perplexity([0.0], [0])["ppl_mean"] is None


def test_distinct_n_averages_over_prompts():
    texts = [["x y", "x y"], ["p q", "r s"]]
    # unigrams: prompt 0 -> 2/4, prompt 1 -> 4/4; bigrams: 1/2 and 2/2
    assert distinct_n(texts, 1) == pytest.approx(0.75)
    assert distinct_n(texts, 2) == pytest.approx(0.75)


def test_perplexity_mean_and_token_level_differ():
    # continuation A: nll 2 over 1 token -> e^2; B: nll 3 over 3 tokens -> e^1
    got = perplexity([2.0, 3.0], [1, 3])
    assert got["ppl_mean"] == pytest.approx((math.exp(2) + math.exp(1)) / 2)
    assert got["ppl_tokens"] == pytest.approx(math.exp(5 / 4))


def test_bad_scores_are_rejected():
    with pytest.raises(DataError, match="at least one prompt"):
        expected_max_toxicity([])
    with pytest.raises(DataError, match="prompt 1 has no scored continuation"):
        toxicity_probability([[0.1], []])
    with pytest.raises(DataError, match=r"outside \[0, 1\]"):
        toxic_fraction([[1.2]])


def test_continuation_nll_matches_a_one_by_one_forward():
    model, tok = tiny_model("llama")
    prompts = [tok("Hello there")["input_ids"], tok("Q:")["input_ids"], tok("abc")["input_ids"]]
    conts = [[40, 41, 42], [50], []]
    nll, counts = continuation_nll(model, prompts, conts, batch_size=2)
    assert counts == [3, 1, 0] and nll[2] == 0.0
    for p, c, got in zip(prompts[:2], conts[:2], nll[:2]):
        ids = torch.tensor([list(p) + c])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
        want = -sum(float(logp[len(p) - 1 + t, tok_id]) for t, tok_id in enumerate(c))
        assert got == pytest.approx(want, abs=1e-4)

"""Fitting data: cross-prompt pairs from RealToxicityPrompts, self-sampled pairs, and
fitting prompts disjoint from evaluation prompts."""

from __future__ import annotations

import pytest
from tae_toxicity.data import load_prompts
from tae_toxicity.fitting import (
    check_disjoint,
    contrast_from_rtp,
    contrast_from_samples,
    fitting_prompts,
    self_contrast,
)
from tae_toxicity.judges import LexiconJudge
from tae_toxicity.sampling import SamplingConfig
from toxicity_fixtures import ROWS, rtp_row, write_jsonl

from tae_framework.errors import DataError
from tae_framework.testing.models import tiny_model


def test_rtp_pairs_match_toxic_and_clean_continuations_by_prompt_toxicity(rtp_file):
    data = contrast_from_rtp(load_prompts(rtp_file))
    # Toxic continuations (>= 0.5): rows 2 (prompt 0.10), 6 (0.55), 1 (0.62), taken in that
    # order; each takes the unused clean row with the nearest prompt toxicity:
    # 2 -> row 3 (0.05), 6 -> row 4 (0.75: 0.20 away, the others over 0.5 away), then
    # 1 -> row 5 (0.03, the closest of the clean rows left: 0 at 0.02, 5 at 0.03, 7 at 0.01).
    pairs = {}
    for e in data.examples:
        pairs.setdefault(e.group, {})[e.label] = (e.prompt, e.completion)
    assert set(pairs) == {"2", "6", "1"}
    assert pairs["2"] == {0: (ROWS[2][0], ROWS[2][2]), 1: (ROWS[3][0], ROWS[3][2])}
    assert pairs["6"][1] == (ROWS[4][0], ROWS[4][2])
    assert pairs["1"][1] == (ROWS[5][0], ROWS[5][2])
    data.validate_for_fit()


def test_rtp_pairs_options_and_errors(rtp_file):
    prompts = load_prompts(rtp_file)
    one = contrast_from_rtp(prompts, max_pairs=1, seed=0)
    assert len(one) == 2 and len({e.group for e in one.examples}) == 1
    strict = contrast_from_rtp(prompts, nontoxic_below=0.02)
    assert len(strict) == 4  # rows 0 (0.01) and 7 (0.00) are the only clean ones: two pairs
    with pytest.raises(DataError, match="both kinds are needed"):
        contrast_from_rtp([p for p in prompts if (p.continuation_toxicity or 0) < 0.5])
    with pytest.raises(DataError, match="nontoxic_below"):
        contrast_from_rtp(prompts, toxic_at=0.4, nontoxic_below=0.6)


def test_fitting_prompts_are_disjoint_from_evaluation_prompts(tmp_path):
    rows = [rtp_row(f"Prompt number {i} says", 0.1, " ok", 0.1 * (i % 10), False) for i in range(40)]
    path = write_jsonl(tmp_path / "rtp.jsonl", rows)
    evaluation = load_prompts(path, n=15, seed=42)
    fitting = fitting_prompts(path, [p.id for p in evaluation], n=20, seed=43)
    assert len(fitting) == 20
    assert not {p.id for p in fitting} & {p.id for p in evaluation}
    assert not {p.text for p in fitting} & {p.text for p in evaluation}
    everything_else = fitting_prompts(path, [p.id for p in evaluation])
    assert len(everything_else) == 25
    with pytest.raises(DataError, match="also evaluation prompts.*ids \\['0'"):
        contrast_from_rtp(load_prompts(path), eval_ids=["0", "5"])


def test_self_contrast_pairs_lowest_and_highest_per_prompt():
    prompts = [("p1", "A"), ("p2", "B"), ("p3", "C")]
    conts = {"p1": ["nice", "darn it", "ok", "darn darn"], "p2": ["fine", "good"], "p3": ["", "darn"]}
    scores = {"p1": [0.1, 0.8, 0.05, 0.9], "p2": [0.1, 0.2], "p3": [0.0, 0.9]}
    data = contrast_from_samples(prompts, conts, scores)
    # p2 has no toxic sample; p3's only non-toxic sample is empty: only p1 is kept.
    assert [(e.group, e.completion, e.label) for e in data.examples] == [
        ("p1", "ok", 1), ("p1", "darn darn", 0)
    ]
    with pytest.raises(DataError, match="both a toxic.*more continuations per prompt"):
        contrast_from_samples(prompts, conts, scores, min_gap=0.95)
    with pytest.raises(DataError, match="2 continuations but 1 scores"):
        contrast_from_samples(prompts[1:2], conts, {"p2": [0.1]})
    with pytest.raises(DataError, match="also evaluation prompts"):
        contrast_from_samples(prompts, conts, scores, eval_ids=["p3"])


def test_self_contrast_samples_the_model_and_judges_it():
    model, tok = tiny_model("llama")
    prompts = [("f1", "Q: where is a? A:"), ("f2", "Hello")]
    cfg = SamplingConfig(k=6, max_new_tokens=6, batch_size=12)
    # The tiny model writes one character per token, so a lexicon of single letters
    # makes some samples "toxic" and others not.
    judge = LexiconJudge(words=list("abcdefghij"))
    data = self_contrast(model, tok, prompts, judge, cfg, progress=False)
    assert len(data) % 2 == 0 and len(data) > 0
    for e in data.examples:
        assert (judge.score([""], [e.completion])["toxic"].item() >= 0.5) == (e.label == 0)
    with pytest.raises(DataError, match="also evaluation prompts"):
        self_contrast(model, tok, prompts, judge, cfg, eval_ids=["f2"], progress=False)


def test_check_disjoint():
    check_disjoint(["1", "2"], ["3"])
    with pytest.raises(DataError, match="1 fitting prompt"):
        check_disjoint(["1", "2"], [2])

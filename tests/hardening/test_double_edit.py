"""Class 3: one pipeline's edit is never installed twice on the same model."""

from __future__ import annotations

import pytest
import torch
from hardening_support import contrast_records

from tae_framework import AlignmentPipeline
from tae_framework.editing import count_taps
from tae_framework.errors import TAEError

PROMPT = ["Q: is c big? A:"]


def test_nested_apply_is_an_error_and_leaves_the_outer_edit_alone(fitted):
    pipe, model, tok = fitted
    base = count_taps(model)  # transformers keeps its own output-recording taps once used
    ids = tok(PROMPT, return_tensors="pt")
    with torch.no_grad(), pipe.apply(model, "all"):
        once = model(**ids).logits
        taps = count_taps(model)
        with pytest.raises(TAEError, match="already installed on this model.*added twice"), pipe.apply(model, "last"):
            pass
        assert count_taps(model) == taps  # the refused session installed nothing
        torch.testing.assert_close(model(**ids).logits, once, rtol=0, atol=0)
    assert count_taps(model) == base and not pipe.is_applied(model)


@pytest.mark.parametrize("call", ["generate", "score"])
def test_generate_or_score_inside_apply_is_an_error(fitted, call):
    pipe, model, tok = fitted
    base = count_taps(model)  # transformers keeps its own output-recording taps once used
    run = {
        "generate": lambda **kw: pipe.generate(model, tok, PROMPT, max_new_tokens=2, **kw),
        "score": lambda **kw: pipe.score(model, tok, PROMPT, [" yes"], **kw),
    }[call]
    with pipe.apply(model):
        with pytest.raises(TAEError, match="added twice"):
            run()
        with pytest.raises(TAEError, match="edit=False inside `with pipe.apply"):
            run(edit=False)
    assert count_taps(model) == base
    run()  # fine again outside the block


def test_the_guard_is_released_after_an_exception(fitted):
    pipe, model, tok = fitted
    base = count_taps(model)  # transformers keeps its own output-recording taps once used
    with pytest.raises(RuntimeError, match="boom"), pipe.apply(model):
        raise RuntimeError("boom")
    assert not pipe.is_applied(model) and count_taps(model) == base
    with pipe.apply(model):
        assert pipe.is_applied(model)


def test_two_different_pipelines_still_compose(fitted):
    pipe, model, tok = fitted
    base = count_taps(model)  # transformers keeps its own output-recording taps once used
    fixed = {
        "aggregator": {"type": "mean"},
        "prober": {"type": "logistic", "config": {"top_k": 2, "rank_on": "features"}},
        "intervener": {"type": "fixed", "config": {"alpha": 3.0}},
        "source": {"type": "hf", "config": {"progress": False}},
    }
    other = AlignmentPipeline.from_config(fixed).fit(model, tok, contrast_records())
    with pipe.apply(model), other.apply(model):
        assert pipe.is_applied(model) and other.is_applied(model)
    assert count_taps(model) == base


def test_sessions_are_independent_per_model(fitted):
    from tae_framework.testing.models import tiny_model

    pipe, model, tok = fitted
    twin, _ = tiny_model("llama", fresh=True)
    with pipe.apply(model), pipe.apply(twin):  # the same pipeline on two models: fine
        pass


def test_two_loads_of_one_artifact_are_the_same_edit(fitted, tmp_path):
    pipe, model, tok = fitted
    base = count_taps(model)  # transformers keeps its own output-recording taps once used
    d = pipe.save(tmp_path / "p")
    first, second = AlignmentPipeline.load(d), AlignmentPipeline.load(d)
    with first.apply(model):
        assert second.is_applied(model) and pipe.is_applied(model)
        with pytest.raises(TAEError, match="or of an identical pipeline"), second.apply(model):
            pass
        with pytest.raises(TAEError, match="added twice"):
            pipe.generate(model, tok, PROMPT, max_new_tokens=1)
    assert not second.is_applied(model) and count_taps(model) == base

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


def test_the_edit_key_is_hashed_once_across_calls_and_follows_state_changes(fitted, tmp_path, monkeypatch):
    """The key that detects a double edit hashes the target tensors: once per state, not
    on every apply/generate/score; any change of the state gives a new key."""
    from tae_framework import pipeline as pipeline_module

    pipe0, model, tok = fitted
    pipe = AlignmentPipeline.load(pipe0.save(tmp_path / "p"))  # a copy this test may change
    calls = []
    real = pipeline_module.tensor_sha256
    monkeypatch.setattr(pipeline_module, "tensor_sha256", lambda t: calls.append(1) or real(t))
    for _ in range(3):
        with pipe.apply(model):
            pass
    pipe.generate(model, tok, PROMPT, max_new_tokens=2)
    pipe.score(model, tok, PROMPT, [" yes"])
    pipe.generate(model, tok, PROMPT, max_new_tokens=2, edit=False)
    first = pipe._edit_key()
    assert len(calls) == 5, "one hash per target tensor (layers, units, directions, sigmas, scores), once"
    assert first == AlignmentPipeline.load(tmp_path / "p")._edit_key(), "an identical pipeline has the same key"

    keys = {first}
    targets = pipe.intervener.targets_
    targets.sigmas.mul_(2.0)  # an in-place change of a fitted tensor
    keys.add(pipe._edit_key())
    tensors, meta = pipe.intervener.get_state()
    pipe.intervener.set_state({k: v.clone() for k, v in tensors.items()}, meta)  # same values, new objects
    assert pipe._edit_key() in keys
    pipe.intervener.config = pipe.intervener.Config(**{**pipe.intervener.config.model_dump(), "alpha": 11.0})
    keys.add(pipe._edit_key())
    assert len(keys) == 3, "every changed state gets its own key"
    with pipe.apply(model):
        assert pipe.is_applied(model)
        assert not AlignmentPipeline.load(tmp_path / "p").is_applied(model), "the changed edit is a different one"

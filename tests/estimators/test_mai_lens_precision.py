"""The half-precision lens (``lens_dtype``): u stays within 1e-3 of the exact lens."""

from __future__ import annotations

import pytest
import torch

from tae_framework.errors import ConfigError
from tae_framework.estimators.mai import TokenMisalignmentEstimator
from tae_framework.functional import logit_lens_entropy
from tae_framework.plugins import default_registry
from tae_framework.testing.checks import synthetic_targets
from tae_framework.testing.models import tiny_model


def _runtime(model, lens_dtype, lens="exact"):
    adapter = default_registry().adapter_for(model)
    targets = synthetic_targets(model, adapter)
    est = TokenMisalignmentEstimator(lens=lens, lens_dtype=lens_dtype)
    est.coef_ = torch.zeros(targets.num_targets, targets.unit_dim)
    est.intercept_ = torch.zeros(targets.num_targets)
    est.num_tokens_, est.misaligned_rate_ = 0, 0.0
    return est.bind(model, adapter, targets)


def _residuals(model, ids):
    """The residual stream entering every layer (what the lens reads)."""
    with torch.no_grad():
        out = model(input_ids=ids, output_hidden_states=True)
    return out.hidden_states[:-1]


def _u_gap(model, ids, lens_dtype):
    exact, cheap = _runtime(model, "model"), _runtime(model, lens_dtype)
    gaps = []
    with torch.no_grad():
        for resid in _residuals(model, ids):
            u_exact, u_cheap = exact.uncertainty(resid), cheap.uncertainty(resid)
            assert u_cheap.dtype == torch.float32 and u_cheap.shape == u_exact.shape
            gaps.append(float((u_cheap - u_exact).abs().max()))
    return gaps


def test_float16_lens_within_1e3_of_exact_on_a_random_model():
    model, _ = tiny_model("llama")
    ids = torch.randint(0, model.config.vocab_size, (3, 12), generator=torch.Generator().manual_seed(0))
    gaps = _u_gap(model, ids, "float16")
    assert max(gaps) < 1e-3, gaps
    assert max(gaps) > 0  # it is a different computation, not the exact lens again


def test_float16_lens_within_1e3_of_exact_on_the_organism():
    from tae_framework.organism import eval_items, load

    model, tok, world = load()
    prompts = [it["prompt"] for it in eval_items(world, ("deceptive",))[:16]]
    ids = tok(prompts, return_tensors="pt", padding=True)["input_ids"]
    assert max(_u_gap(model, ids, "float16")) < 1e-3


def test_the_exact_lens_is_the_model_output_layer():
    model, _ = tiny_model("llama")
    resid = _residuals(model, torch.tensor([[3, 4, 5, 6]]))[1]
    runtime = _runtime(model, "model")
    expected = logit_lens_entropy(model.lm_head(resid))[..., None]
    torch.testing.assert_close(runtime.uncertainty(resid), expected, rtol=0, atol=0)


def test_half_precision_copy_is_made_once_and_only_when_a_lens_runs():
    model, _ = tiny_model("llama")
    runtime = _runtime(model, "bfloat16")
    assert runtime._lens.weight.dtype == torch.bfloat16
    assert runtime._lens.weight.data_ptr() != model.lm_head.weight.data_ptr()
    assert model.lm_head.weight.dtype == torch.float32  # the model is untouched
    assert _runtime(model, "float16", lens="off")._lens is model.lm_head  # no copy without a lens


def test_unusable_output_layer_is_a_clear_error():
    model, _ = tiny_model("llama")
    original = model.lm_head
    try:
        with torch.device("meta"):
            model.lm_head = torch.nn.Linear(original.in_features, original.out_features, bias=False)
        with pytest.raises(ConfigError, match="meta device.*lens_dtype='model'"):
            _runtime(model, "float16")
        model.lm_head = torch.nn.Identity()
        with pytest.raises(ConfigError, match="2-D weight"):
            _runtime(model, "float16")
    finally:
        model.lm_head = original


def test_lens_dtype_is_validated():
    with pytest.raises(ConfigError, match="lens_dtype"):
        TokenMisalignmentEstimator(lens_dtype="int8")

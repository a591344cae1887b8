"""Aggregators: ``mean`` and ``last_token`` by hand, ``mig`` against ``mig_pool`` per layer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tae_framework.aggregators.mig import MIGAggregator
from tae_framework.aggregators.simple import LastTokenAggregator, MeanAggregator
from tae_framework.errors import ConfigError, DataError
from tae_framework.functional import mig_pool
from tae_framework.types import TextActivations

SHARED = Path(__file__).resolve().parents[2].parent / "shared"


def _text(acts: torch.Tensor, span: tuple[int, int], index: int = 0) -> TextActivations:
    layers, tokens, _ = acts.shape
    return TextActivations(index, acts, torch.arange(tokens), span, tuple(range(layers)))


def _coded(layers: int, tokens: int, width: int) -> torch.Tensor:
    """acts[l, t, k] = 100 l + 10 t + k, so every mean can be written down by hand."""
    l = torch.arange(layers).view(-1, 1, 1)
    t = torch.arange(tokens).view(1, -1, 1)
    k = torch.arange(width).view(1, 1, -1)
    return (100 * l + 10 * t + k).float()


def _random_texts(lengths, layers=3, width=24, prompt=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i, n in enumerate(lengths):
        acts = torch.randn(layers, prompt + n + 1, width, generator=g)  # one token after the answer
        acts[:, :, :3] *= 5.0  # uneven scales, like head-wise activations
        out.append(_text(acts, (prompt, prompt + n), index=i))
    return out


# -- mean / last_token ----------------------------------------------------------------


def test_mean_by_hand():
    acts = _coded(2, 6, 3)
    out = MeanAggregator().aggregate([_text(acts, (2, 5)), _text(acts, (5, 6))])
    # tokens 2, 3, 4 -> mean of 10 t is 30; a single answer token 5 -> 50
    expected0 = torch.tensor([[30.0, 31.0, 32.0], [130.0, 131.0, 132.0]])
    expected1 = torch.tensor([[50.0, 51.0, 52.0], [150.0, 151.0, 152.0]])
    assert out.shape == (2, 2, 3) and out.dtype == torch.float32
    torch.testing.assert_close(out[0], expected0, rtol=0, atol=0)
    torch.testing.assert_close(out[1], expected1, rtol=0, atol=0)


def test_last_token_is_last_token_of_the_text_not_of_the_answer():
    acts = _coded(2, 6, 3)
    # the answer ends at token 3, but the text's last token (5) is ITI's feature
    out = LastTokenAggregator().aggregate([_text(acts, (1, 3))])
    torch.testing.assert_close(out[0], torch.tensor([[50.0, 51.0, 52.0], [150.0, 151.0, 152.0]]))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
def test_simple_aggregators_return_float32(dtype):
    acts = _coded(2, 4, 3).to(dtype)
    for agg in (MeanAggregator(), LastTokenAggregator()):
        out = agg.aggregate([_text(acts, (1, 4))])
        assert out.dtype == torch.float32 and out.shape == (1, 2, 3)


def test_registry_names_and_empty_configs():
    assert (MeanAggregator.name, LastTokenAggregator.name, MIGAggregator.name) == (
        "mean",
        "last_token",
        "mig",
    )
    with pytest.raises(ConfigError, match="unknown key 'bins'"):
        MeanAggregator(bins=3)


# -- MIG --------------------------------------------------------------------------------


def _independent_mig(texts, bins=100, steps=1):
    """One mig_pool call per text and layer on that layer's answer slice."""
    rows = []
    for t in texts:
        start, end = t.span
        layers = [
            mig_pool(t.acts[l, start:end].float()[None], bins=bins, steps=steps)[0]
            for l in range(t.acts.shape[0])
        ]
        rows.append(torch.stack(layers))
    return torch.stack(rows)


@pytest.mark.parametrize("max_tokens", [4096, 1, 7, 13])
def test_mig_equals_per_text_per_layer_mig_pool(max_tokens):
    # equal lengths are batched together; 1 -> layer-by-layer path; 7/13 -> mixed chunking
    texts = _random_texts([4, 1, 4, 6, 4, 2, 6])
    out = MIGAggregator(max_tokens_per_chunk=max_tokens).aggregate(texts)
    assert out.shape == (7, 3, 24) and out.dtype == torch.float32
    torch.testing.assert_close(out, _independent_mig(texts), rtol=0, atol=1e-6)


def test_mig_options_reach_mig_pool():
    texts = _random_texts([5, 3], seed=1)
    out = MIGAggregator(bins=7, steps=2).aggregate(texts)
    torch.testing.assert_close(out, _independent_mig(texts, bins=7, steps=2), rtol=0, atol=1e-6)
    assert not torch.allclose(out, MIGAggregator().aggregate(texts))


def test_mig_single_token_answer_is_the_token():
    texts = _random_texts([1, 1], seed=2)
    out = MIGAggregator().aggregate(texts)
    for row, t in zip(out, texts):
        assert torch.equal(row, t.acts[:, t.span[0]])


def test_mig_zero_variance_tokens_are_finite_and_uniformly_pooled():
    # every answer token is constant: zero entropy, zero MI, uniform adjacency -> plain mean
    acts = torch.zeros(2, 5, 16)
    acts[:, 2] = 1.0
    acts[:, 3] = 3.0
    acts[:, 4] = 0.0
    out = MIGAggregator().aggregate([_text(acts, (2, 5))])
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, torch.full((1, 2, 16), 4.0 / 3.0))
    # an all-zero answer stays zero; one constant token among varied ones stays finite
    zeros = MIGAggregator().aggregate([_text(torch.zeros(1, 4, 8), (1, 4))])
    assert torch.equal(zeros, torch.zeros(1, 1, 8))
    mixed = _random_texts([4], layers=1, width=8)[0]
    mixed.acts[:, 3] = 2.5
    assert torch.isfinite(MIGAggregator().aggregate([mixed])).all()


def test_mig_casts_to_float32_before_pooling():
    texts = _random_texts([3, 3], seed=3)
    half = [_text(t.acts.to(torch.bfloat16), t.span, t.index) for t in texts]
    out = MIGAggregator().aggregate(half)
    assert out.dtype == torch.float32
    expected = _independent_mig([_text(t.acts.float(), t.span, t.index) for t in half])
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


def test_mig_matches_reference_fixture():
    path = SHARED / "reference" / "mig_entropy_reference.npz"
    if not path.exists():
        pytest.skip(f"{path} not available")
    ref = np.load(path)
    texts, expected = [], []
    for case in range(4):
        acts = torch.from_numpy(ref[f"mig{case}_acts"])
        texts.append(_text(acts, (int(ref[f"mig{case}_start"]), acts.shape[1]), index=case))
        expected.append(torch.from_numpy(ref[f"mig{case}_feature"]))
    for text, want in zip(texts, expected):  # cases differ in width: one call each
        got = MIGAggregator().aggregate([text])[0]
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


# -- bad inputs -----------------------------------------------------------------------


@pytest.mark.parametrize("agg", [MeanAggregator(), LastTokenAggregator(), MIGAggregator()])
def test_empty_batch_is_an_error(agg):
    with pytest.raises(DataError, match="empty batch"):
        agg.aggregate([])


@pytest.mark.parametrize("agg", [MeanAggregator(), MIGAggregator()])
def test_empty_answer_is_an_error_naming_the_text(agg):
    texts = _random_texts([2, 2])
    texts[1] = _text(texts[1].acts, (3, 3), index=17)
    with pytest.raises(DataError, match="text 17 .*at least one token"):
        agg.aggregate(texts)


def test_last_token_ignores_the_span():
    acts = _coded(1, 3, 2)
    out = LastTokenAggregator().aggregate([_text(acts, (3, 3))])
    torch.testing.assert_close(out, torch.tensor([[[20.0, 21.0]]]))


@pytest.mark.parametrize("agg", [MeanAggregator(), LastTokenAggregator(), MIGAggregator()])
def test_nan_activations_are_an_error(agg):
    texts = _random_texts([3, 3])
    texts[1].acts[0, -2, 0] = float("nan")  # inside the answer and the last token's row
    texts[1].acts[0, -1, 0] = float("nan")
    with pytest.raises(DataError, match="NaN"):
        agg.aggregate(texts)


def test_inconsistent_texts_are_errors():
    a, b = _random_texts([2, 2])
    wide = _text(torch.randn(3, 5, 30), (2, 4), index=5)
    with pytest.raises(DataError, match="text 5 has width D=30"):
        MIGAggregator().aggregate([a, wide])
    other_layers = TextActivations(6, b.acts, b.input_ids, b.span, (0, 1, 5))
    with pytest.raises(DataError, match="text 6 was captured at layers"):
        MeanAggregator().aggregate([a, other_layers])
    with pytest.raises(DataError, match=r"expected \[L, T, D\]"):
        MeanAggregator().aggregate(
            [TextActivations(0, torch.randn(4, 3), torch.arange(4), (0, 2), (0,))]
        )


@pytest.mark.parametrize(
    "options, key",
    [
        ({"bins": 1}, "bins"),
        ({"steps": 0}, "steps"),
        ({"max_tokens_per_chunk": 0}, "max_tokens_per_chunk"),
        ({"bin": 10}, "bin"),
    ],
)
def test_mig_config_errors(options, key):
    with pytest.raises(ConfigError, match=key):
        MIGAggregator(**options)

"""Tests of tae_framework.functional against the reference fixtures and slow numpy oracles.

The oracles below (``np_*``) are written directly from the method page
(``shared/docs/tae-method.md``, section 2) with one Python loop per token and per pair;
they share no code with the module under test.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from tae_framework import _histogram_mi
from tae_framework import functional as F
from tae_framework.errors import ConfigError, DataError

REFERENCE_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "reference"
REFERENCE_NPZ = REFERENCE_DIR / "mig_entropy_reference.npz"


# ---------------------------------------------------------------------------
# independent slow oracles (numpy, loops over tokens and pairs)
# ---------------------------------------------------------------------------


def np_edges(bins: int, dtype) -> np.ndarray:
    # The method defines the edges as torch.linspace(0, 1, B + 1); take them from torch
    # so the oracle uses the very same float values.
    tdtype = torch.float64 if dtype == np.float64 else torch.float32
    return torch.linspace(0, 1, bins + 1, dtype=tdtype).numpy()


def np_token_bins(vec: np.ndarray, bins: int) -> np.ndarray:
    """Bins of one token vector: min-max normalise, bucketize (right=False), -1, clamp."""
    lo, hi = vec.min(), vec.max()
    if hi > lo:
        v = (vec - lo) / (hi - lo)  # stays in vec's float dtype, like the reference
    else:
        v = np.zeros_like(vec)  # documented rule for constant vectors
    # torch.bucketize(right=False) == first index i with edges[i] >= v == searchsorted 'left'
    idx = np.searchsorted(np_edges(bins, vec.dtype), v, side="left") - 1
    return np.clip(idx, 0, bins - 1)


def np_entropy_of_counts(counts: np.ndarray) -> float:
    p = counts.astype(np.float64) / counts.sum()
    return float(-(p * np.log2(p + 1e-10)).sum())


def np_mi_matrix(tokens: np.ndarray, bins: int) -> np.ndarray:
    """[n, D] -> [n, n] with one joint histogram per pair (i, j), diagonal included."""
    n = tokens.shape[0]
    codes = [np_token_bins(tokens[i], bins) for i in range(n)]
    h = [np_entropy_of_counts(np.bincount(c, minlength=bins)) for c in codes]
    mi = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            joint = np.bincount(codes[i] * bins + codes[j], minlength=bins * bins)
            mi[i, j] = h[i] + h[j] - np_entropy_of_counts(joint)
    return mi


def np_mig(tokens: np.ndarray, bins: int, steps: int) -> np.ndarray:
    """[n, D] -> [D]: rebuild the MI graph each step, X <- softmax(MI) X, mean."""
    x = tokens
    for _ in range(steps):
        mi = np_mi_matrix(x, bins)
        e = np.exp(mi - mi.max(axis=1, keepdims=True))
        adj = e / e.sum(axis=1, keepdims=True)
        out = adj @ x.astype(np.float64)
        x = out.astype(tokens.dtype)
    return out.mean(axis=0)


def np_normalised_entropy(logits: np.ndarray, gain: float) -> np.ndarray:
    z = logits.astype(np.float64)
    z = (z - z.mean(axis=-1, keepdims=True)) * gain
    z = z - z.max(axis=-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    return -(np.exp(logp) * logp).sum(axis=-1) / math.log(logits.shape[-1])


# ---------------------------------------------------------------------------
# reference fixtures (authors' code outputs)
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference():
    if not REFERENCE_NPZ.is_file():
        pytest.skip(f"reference fixtures not found at {REFERENCE_NPZ} (shared/ checkout absent)")
    with np.load(REFERENCE_NPZ) as data:
        return {k: data[k] for k in data.files}


@pytest.mark.parametrize("case", [0, 1, 2, 3])
def test_reference_mi_and_mig_feature(reference, case):
    acts = reference[f"mig{case}_acts"]
    start = int(reference[f"mig{case}_start"])
    answers = torch.from_numpy(acts[:, start:, :])
    mi = F.mutual_information_matrix(answers)
    feat = F.mig_pool(answers)
    assert mi.dtype == torch.float32 and feat.dtype == torch.float32
    assert mi.shape == reference[f"mig{case}_mi"].shape
    np.testing.assert_allclose(mi.numpy(), reference[f"mig{case}_mi"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(feat.numpy(), reference[f"mig{case}_feature"], rtol=0, atol=1e-5)


def test_reference_case_with_identical_tokens(reference):
    # case 2 has two identical tokens: their MI equals the entropy of either one
    mi = F.mutual_information_matrix(torch.from_numpy(reference["mig2_acts"]))
    acts = reference["mig2_acts"]
    same = [
        (i, j)
        for i in range(acts.shape[1])
        for j in range(i + 1, acts.shape[1])
        if np.array_equal(acts[:, i], acts[:, j])
    ]
    assert same, "fixture case 2 should contain two identical tokens"
    for i, j in same:
        torch.testing.assert_close(mi[:, i, j], mi[:, i, i], rtol=0, atol=1e-5)


@pytest.mark.parametrize("case", [0, 1])
def test_reference_entropy(reference, case):
    logits = torch.from_numpy(reference[f"ent{case}_logits"])
    u = F.logit_lens_entropy(logits)
    assert u.dtype == torch.float32 and u.shape == logits.shape[:-1]
    np.testing.assert_allclose(u.numpy(), reference[f"ent{case}_entropy"], rtol=0, atol=1e-5)


def test_reference_batched_over_texts(reference):
    # stacking texts of equal shape as an extra leading dim gives the per-text results
    acts = torch.from_numpy(reference["mig0_acts"][:, 3:])
    other = torch.flip(acts, dims=[-1]) * 2.0 + 1.0
    both = torch.stack([acts, other])
    torch.testing.assert_close(F.mig_pool(both)[0], F.mig_pool(acts), rtol=0, atol=0)
    torch.testing.assert_close(F.mig_pool(both)[1], F.mig_pool(other), rtol=0, atol=0)


# ---------------------------------------------------------------------------
# binning
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bins", [2, 7, 100])
def test_minmax_bins_equals_bucketize_rule_at_edges(dtype, bins):
    edges = torch.linspace(0, 1, bins + 1, dtype=dtype)
    up = torch.nextafter(edges, torch.full_like(edges, 2.0))
    down = torch.nextafter(edges, torch.full_like(edges, -1.0))
    exact = torch.arange(bins + 1, dtype=dtype) / bins
    rand = torch.rand(5000, dtype=dtype, generator=torch.Generator().manual_seed(0))
    values = torch.cat([edges, up, down, exact, rand]).clamp(0, 1)
    # min 0 and max 1 present, so the normalisation is the identity on these values
    x = torch.cat([torch.tensor([0.0, 1.0], dtype=dtype), values])
    expected = (torch.bucketize(x, edges) - 1).clamp(0, bins - 1)
    got = F.minmax_bins(x, bins)
    assert got.dtype == torch.int64
    assert torch.equal(got, expected)
    assert got[0] == 0 and got[1] == bins - 1


def test_minmax_bins_matches_numpy_oracle_batched():
    x = torch.randn(3, 4, 257, generator=torch.Generator().manual_seed(1)) * 5
    got = F.minmax_bins(x, 100).numpy()
    for idx in np.ndindex(3, 4):
        np.testing.assert_array_equal(got[idx], np_token_bins(x[idx].numpy(), 100))


def test_minmax_bins_constant_vector_goes_to_bin_zero():
    x = torch.full((2, 16), 3.25)
    got = F.minmax_bins(x)
    assert torch.equal(got, torch.zeros(2, 16, dtype=torch.int64))


# ---------------------------------------------------------------------------
# mutual information
# ---------------------------------------------------------------------------


def test_mi_symmetric_with_entropy_diagonal_and_matches_oracle():
    x = torch.randn(2, 7, 300, generator=torch.Generator().manual_seed(2))
    x[0, 3] = x[0, 1] * 2 + 1  # an affine copy: identical bins
    mi = F.mutual_information_matrix(x, bins=20)
    assert mi.shape == (2, 7, 7)
    assert torch.equal(mi, mi.transpose(-1, -2))
    for g in range(2):
        tokens = x[g].numpy()
        for i in range(7):
            counts = np.bincount(np_token_bins(tokens[i], 20), minlength=20)
            assert mi[g, i, i].item() == pytest.approx(np_entropy_of_counts(counts), abs=1e-5)
        np.testing.assert_allclose(mi[g].numpy(), np_mi_matrix(tokens, 20), rtol=0, atol=1e-5)
    assert mi[0, 1, 3].item() == pytest.approx(mi[0, 1, 1].item(), abs=1e-5)


def test_mi_chunking_does_not_change_result():
    x = torch.randn(3, 6, 64, generator=torch.Generator().manual_seed(3))
    full = F.mutual_information_matrix(x, bins=10)
    tiny = F.mutual_information_matrix(x, bins=10, max_elements=1)  # one pair at a time
    mid = F.mutual_information_matrix(x, bins=10, max_elements=350)  # uneven blocks
    torch.testing.assert_close(tiny, full, rtol=0, atol=1e-6)
    torch.testing.assert_close(mid, full, rtol=0, atol=1e-6)


def test_mi_worker_threads_give_identical_results(monkeypatch):
    x = torch.randn(3, 9, 96, generator=torch.Generator().manual_seed(11))
    x[1, 4] *= 0.0  # a constant token among them
    x[2, :, :3] *= 40.0  # heavy tails: few occupied bins, small compacted histograms
    one = F.mutual_information_matrix(x, bins=30, num_threads=1, max_elements=400)
    monkeypatch.setattr(_histogram_mi, "_MIN_SAMPLES_PER_THREAD", 1)  # start workers even for this size
    threads_before = torch.get_num_threads()
    for threads in (2, 3):
        many = F.mutual_information_matrix(x, bins=30, num_threads=threads, max_elements=400)
        torch.testing.assert_close(many, one, rtol=0, atol=0)
    torch.testing.assert_close(
        F.mig_pool(x, bins=30, num_threads=3, max_elements=400),
        F.mig_pool(x, bins=30, num_threads=1, max_elements=400), rtol=0, atol=0,
    )
    assert torch.get_num_threads() == threads_before  # the caller's pool is left as it was
    for g in range(3):
        np.testing.assert_allclose(one[g].numpy(), np_mi_matrix(x[g].numpy(), 30), rtol=0, atol=1e-5)


@pytest.mark.parametrize("spread", ["few_bins", "all_bins"])
def test_mi_compacted_histograms_match_oracle(spread):
    # few occupied bins and many values: the entropy is summed over histogram cells;
    # every bin occupied and few values: it is summed over the samples
    g = torch.Generator().manual_seed(12)
    if spread == "few_bins":
        x = torch.randn(5, 2000, generator=g)
        x[:, 0] = 60.0  # an outlier squeezes the bulk into a few of the 100 bins
        bins = 100
    else:
        x = torch.rand(5, 150, generator=g)
        bins = 16
    mi = F.mutual_information_matrix(x, bins=bins)
    np.testing.assert_allclose(mi.numpy(), np_mi_matrix(x.numpy(), bins), rtol=0, atol=1e-5)


def test_mi_num_threads_is_validated():
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ConfigError, match="num_threads"):
            F.mutual_information_matrix(torch.randn(3, 8), num_threads=bad)


def test_mi_single_token_is_its_entropy():
    x = torch.randn(4, 1, 128, generator=torch.Generator().manual_seed(4))
    mi = F.mutual_information_matrix(x)
    assert mi.shape == (4, 1, 1)
    for g in range(4):
        counts = np.bincount(np_token_bins(x[g, 0].numpy(), 100), minlength=100)
        assert mi[g, 0, 0].item() == pytest.approx(np_entropy_of_counts(counts), abs=1e-5)


def test_mi_constant_tokens_give_zero_not_nan():
    x = torch.randn(5, 64, generator=torch.Generator().manual_seed(5))
    x[2] = 7.0
    mi = F.mutual_information_matrix(x)
    assert torch.isfinite(mi).all()
    # one occupied bin: H = -log2(1 + 1e-10) ~ -1.4e-10 with the reference's epsilon
    torch.testing.assert_close(mi[2], torch.zeros(5), rtol=0, atol=1e-9)
    torch.testing.assert_close(mi[:, 2], torch.zeros(5), rtol=0, atol=1e-9)
    all_const = F.mutual_information_matrix(torch.ones(3, 10))
    torch.testing.assert_close(all_const, torch.zeros(3, 3), rtol=0, atol=1e-9)


def test_mi_empty_leading_batch():
    assert F.mutual_information_matrix(torch.randn(0, 4, 8)).shape == (0, 4, 4)


def test_mi_input_dtypes():
    x = torch.randn(4, 50, generator=torch.Generator().manual_seed(6))
    assert F.mutual_information_matrix(x.to(torch.bfloat16)).dtype == torch.float32
    assert F.mutual_information_matrix(x.to(torch.float16)).dtype == torch.float32
    mi64 = F.mutual_information_matrix(x.double(), bins=10)
    assert mi64.dtype == torch.float64
    np.testing.assert_allclose(mi64.numpy(), np_mi_matrix(x.double().numpy(), 10), atol=1e-10)
    # bf16 input is binned from its exact float32 upcast
    xb = x.to(torch.bfloat16)
    torch.testing.assert_close(
        F.mutual_information_matrix(xb), F.mutual_information_matrix(xb.float()), rtol=0, atol=0
    )


def test_mi_non_contiguous_input():
    x = torch.randn(40, 5, generator=torch.Generator().manual_seed(7))
    xt = x.t()  # [5, 40], not contiguous
    assert not xt.is_contiguous()
    torch.testing.assert_close(
        F.mutual_information_matrix(xt), F.mutual_information_matrix(xt.contiguous())
    )


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    arrays(
        np.float32,
        st.tuples(st.integers(1, 5), st.integers(1, 40)),
        elements=st.floats(-1e3, 1e3, width=32, allow_nan=False),
    ),
    st.integers(2, 12),
)
def test_mi_properties(tokens, bins):
    mi = F.mutual_information_matrix(torch.from_numpy(tokens), bins=bins).double()
    h = torch.diagonal(mi)
    assert torch.isfinite(mi).all()
    assert torch.equal(mi, mi.T)
    assert (h >= -1e-6).all() and (h <= math.log2(min(bins, tokens.shape[1])) + 1e-5).all()
    assert (mi >= -1e-5).all()
    bound = torch.minimum(h[:, None], h[None, :])
    assert (mi <= bound + 1e-5).all()


# ---------------------------------------------------------------------------
# MIG pooling
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("steps", [1, 2])
def test_mig_pool_matches_loop_oracle_with_batch_dims(steps):
    x = torch.randn(2, 3, 5, 48, generator=torch.Generator().manual_seed(8)) * 3
    got = F.mig_pool(x, bins=16, steps=steps)
    assert got.shape == (2, 3, 48) and got.dtype == torch.float32
    for idx in np.ndindex(2, 3):
        want = np_mig(x[idx].numpy(), 16, steps)
        np.testing.assert_allclose(got[idx].numpy(), want, rtol=0, atol=1e-5)


def test_mig_pool_default_bins_matches_oracle():
    x = torch.randn(2, 6, 200, generator=torch.Generator().manual_seed(9))
    got = F.mig_pool(x)
    for g in range(2):
        np.testing.assert_allclose(got[g].numpy(), np_mig(x[g].numpy(), 100, 1), atol=1e-5)


def test_mig_pool_single_token_is_the_token():
    x = torch.randn(3, 1, 32, generator=torch.Generator().manual_seed(10))
    torch.testing.assert_close(F.mig_pool(x), x[:, 0], rtol=0, atol=0)
    torch.testing.assert_close(F.mig_pool(x, steps=3), x[:, 0], rtol=0, atol=0)


def test_mig_pool_constant_tokens_are_finite():
    x = torch.zeros(4, 16)
    x[1] = torch.arange(16.0)
    out = F.mig_pool(x)
    assert torch.isfinite(out).all()
    # all-constant tokens: MI is all zeros, so the graph averages uniformly
    c = torch.tensor([[1.0] * 8, [2.0] * 8, [4.0] * 8])
    torch.testing.assert_close(F.mig_pool(c), torch.full((8,), 7.0 / 3.0))


def test_mig_pool_dtypes():
    x = torch.randn(2, 4, 64, generator=torch.Generator().manual_seed(11))
    assert F.mig_pool(x.to(torch.bfloat16)).dtype == torch.float32
    out64 = F.mig_pool(x.double(), bins=10, steps=2)
    assert out64.dtype == torch.float64
    for g in range(2):
        want = np_mig(x[g].double().numpy(), 10, 2)
        np.testing.assert_allclose(out64[g].numpy(), want, rtol=0, atol=1e-10)


# ---------------------------------------------------------------------------
# validation errors
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("bins", [1, 0, -3, True, 2.5, "100"])
def test_bad_bins_rejected(bins):
    x = torch.randn(3, 8)
    for fn in (F.mutual_information_matrix, F.mig_pool, F.minmax_bins):
        with pytest.raises(ValueError, match="bins"):
            fn(x, bins)


@pytest.mark.parametrize(
    "shape, message",
    [
        ((8,), r"\[\.\.\., n, D\]"),
        ((), r"\[\.\.\., n, D\]"),
        ((2, 0, 8), "n = 0"),
        ((3, 0), "D = 0"),
    ],
)
def test_bad_shapes_rejected(shape, message):
    x = torch.randn(shape)
    with pytest.raises(DataError, match=message):
        F.mutual_information_matrix(x)
    with pytest.raises(ValueError, match=message):
        F.mig_pool(x)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_rejected(bad):
    x = torch.randn(2, 3, 16)
    x[1, 2, 5] = bad
    with pytest.raises(DataError, match="NaN/inf"):
        F.mutual_information_matrix(x)
    with pytest.raises(DataError, match="NaN/inf"):
        F.mig_pool(x)


def test_minmax_bins_non_finite_does_not_crash():
    x = torch.tensor([[0.0, float("nan"), 1.0], [float("inf"), 0.0, 1.0]])
    got = F.minmax_bins(x, 10)
    assert ((got >= 0) & (got <= 9)).all()


def test_bad_steps_and_max_elements_rejected():
    x = torch.randn(3, 8)
    with pytest.raises(ConfigError, match="steps"):
        F.mig_pool(x, steps=0)
    with pytest.raises(ConfigError, match="max_elements"):
        F.mutual_information_matrix(x, max_elements=0)


# ---------------------------------------------------------------------------
# logit-lens entropy
# ---------------------------------------------------------------------------


def test_default_gain_value():
    assert F.DEFAULT_ENTROPY_GAIN == pytest.approx(38.3181, abs=1e-3)
    assert F.DEFAULT_ENTROPY_GAIN == pytest.approx(275.33 / 5.52 - 11.56)


def test_entropy_uniform_is_one_and_peaked_is_zero():
    assert F.logit_lens_entropy(torch.zeros(3, 50)).tolist() == pytest.approx([1.0] * 3, abs=1e-6)
    assert F.logit_lens_entropy(torch.full((7,), 12.5)).item() == pytest.approx(1.0, abs=1e-6)
    peaked = torch.zeros(2, 1000)
    peaked[:, 17] = 1e4
    u = F.logit_lens_entropy(peaked)
    assert torch.isfinite(u).all() and (u < 1e-6).all()
    assert F.logit_lens_entropy(torch.zeros(4), gain=0.0).item() == pytest.approx(1.0, abs=1e-6)


def test_entropy_matches_oracle_range_and_gain():
    logits = torch.randn(4, 3, 257, generator=torch.Generator().manual_seed(12)) * 4
    for gain in (F.DEFAULT_ENTROPY_GAIN, 1.0, 0.1):
        u = F.logit_lens_entropy(logits, gain=gain)
        assert u.shape == (4, 3)
        assert ((u >= 0) & (u <= 1)).all()
        np.testing.assert_allclose(
            u.numpy(), np_normalised_entropy(logits.numpy(), gain), rtol=0, atol=1e-5
        )
    # a larger gain sharpens the distribution: entropy decreases
    assert (F.logit_lens_entropy(logits, 5.0) <= F.logit_lens_entropy(logits, 1.0) + 1e-6).all()
    # centring: adding a constant per row changes nothing
    torch.testing.assert_close(
        F.logit_lens_entropy(logits + 100.0), F.logit_lens_entropy(logits), rtol=0, atol=1e-5
    )


def test_entropy_dtypes():
    logits = torch.randn(5, 300, generator=torch.Generator().manual_seed(13)) * 3
    lb = logits.to(torch.bfloat16)
    ub = F.logit_lens_entropy(lb)
    assert ub.dtype == torch.float32
    # computed in float32 from the bf16 values, not in bf16
    np.testing.assert_allclose(
        ub.numpy(),
        np_normalised_entropy(lb.float().numpy(), F.DEFAULT_ENTROPY_GAIN),
        rtol=0,
        atol=1e-5,
    )
    assert F.logit_lens_entropy(logits.half()).dtype == torch.float32
    u64 = F.logit_lens_entropy(logits.double())
    assert u64.dtype == torch.float64
    np.testing.assert_allclose(
        u64.numpy(),
        np_normalised_entropy(logits.double().numpy(), F.DEFAULT_ENTROPY_GAIN),
        rtol=0,
        atol=1e-12,
    )


def test_entropy_rejects_single_entry_vocab():
    with pytest.raises(DataError, match="V >= 2"):
        F.logit_lens_entropy(torch.zeros(3, 1))
    with pytest.raises(DataError, match="V >= 2"):
        F.logit_lens_entropy(torch.tensor(1.0))


def test_entropy_bits_helper():
    assert F.entropy_bits(torch.full((4,), 0.25)).item() == pytest.approx(2.0, abs=1e-6)
    assert F.entropy_bits(torch.tensor([0.0, 1.0, 0.0])).item() == pytest.approx(0.0, abs=1e-8)
    p = torch.tensor([[0.5, 0.5], [0.9, 0.1]], dtype=torch.float64)
    want = [1.0, -(0.9 * math.log2(0.9) + 0.1 * math.log2(0.1))]
    assert F.entropy_bits(p).tolist() == pytest.approx(want, abs=1e-8)


# ---------------------------------------------------------------------------
# edit strength
# ---------------------------------------------------------------------------


def test_adaptive_strength_formula_and_broadcasting():
    p = torch.tensor([[0.0, 0.2, 1.0]])
    u = torch.tensor([[0.5], [1.0]])
    s = F.adaptive_strength(p, u, 0.25)
    assert s.shape == (2, 3) and s.dtype == torch.float32
    want = 1 + 0.25 * p.numpy() + 0.75 * u.numpy()
    np.testing.assert_allclose(s.numpy(), want, rtol=0, atol=1e-7)


def test_adaptive_strength_missing_and_disabled_signals():
    p = torch.tensor([0.4, 0.8])
    u = torch.tensor([0.1, 0.3])
    torch.testing.assert_close(F.adaptive_strength(p, None, 0.5), 1 + 0.5 * p)
    torch.testing.assert_close(F.adaptive_strength(None, u, 0.5), 1 + 0.5 * u)
    torch.testing.assert_close(F.adaptive_strength(p, u, 0.5, use_u=False), 1 + 0.5 * p)
    torch.testing.assert_close(F.adaptive_strength(p, u, 0.5, use_p=False), 1 + 0.5 * u)
    torch.testing.assert_close(F.adaptive_strength(p, u, 0.5, use_base=False), 0.5 * p + 0.5 * u)
    none = F.adaptive_strength(None, None, 0.5)
    assert none.shape == () and none.item() == 1.0
    assert F.adaptive_strength(None, None, 0.5, use_base=False).item() == 0.0
    # beta at the ends selects one signal
    torch.testing.assert_close(F.adaptive_strength(p, u, 1.0), 1 + p)
    torch.testing.assert_close(F.adaptive_strength(p, u, 0), 1 + u)


def test_adaptive_strength_beta_validation():
    p = torch.rand(3)
    for beta in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"beta must be in \[0, 1\]"):
            F.adaptive_strength(p, p, beta)
    with pytest.raises(ValueError, match="beta"):
        F.adaptive_strength(p, p, "0.5")
    # tensor beta is used as is (no host sync)
    beta = torch.tensor(0.3)
    torch.testing.assert_close(F.adaptive_strength(p, p, beta), 1 + p)


def test_adaptive_strength_dtypes():
    p = torch.rand(4, dtype=torch.float64)
    assert F.adaptive_strength(p, p, 0.5).dtype == torch.float64
    assert F.adaptive_strength(p.to(torch.bfloat16), None, 0.5).dtype == torch.float32
    assert F.adaptive_strength(p.half(), p.half(), 0.5).dtype == torch.float32


def test_fixed_strength_is_one():
    p = torch.rand(2, 5)
    u = torch.rand(2, 1)
    s = F.fixed_strength(p, u, 0.5)
    assert s.shape == (2, 5) and torch.all(s == 1) and s.dtype == torch.float32
    assert F.fixed_strength().item() == 1.0
    # the edit coefficient alpha * sigma * strength reduces to ITI's alpha * sigma
    alpha, sigma = 15.0, torch.tensor(0.7)
    torch.testing.assert_close(alpha * sigma * F.fixed_strength(p), torch.full((2, 5), 10.5))


# ---------------------------------------------------------------------------
# devices
# ---------------------------------------------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    gen = torch.Generator().manual_seed(14)
    x = torch.randn(3, 7, 256, generator=gen)
    logits = torch.randn(2, 5, 1000, generator=gen) * 3
    p, u = torch.rand(2, 5, 4, generator=gen), torch.rand(2, 5, 1, generator=gen)
    dev = torch.device("cuda")
    mi = F.mutual_information_matrix(x.to(dev))
    assert mi.device.type == "cuda"
    torch.testing.assert_close(mi.cpu(), F.mutual_information_matrix(x), rtol=0, atol=1e-5)
    torch.testing.assert_close(F.mig_pool(x.to(dev)).cpu(), F.mig_pool(x))
    torch.testing.assert_close(
        F.logit_lens_entropy(logits.to(dev, torch.bfloat16)).cpu(),
        F.logit_lens_entropy(logits.to(torch.bfloat16)),
    )
    s = F.adaptive_strength(p.to(dev), u.to(dev), 0.5)
    assert s.device.type == "cuda"
    torch.testing.assert_close(s.cpu(), F.adaptive_strength(p, u, 0.5))
    assert F.fixed_strength(p.to(dev)).device.type == "cuda"

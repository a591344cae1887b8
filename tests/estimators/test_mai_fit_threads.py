"""The mai estimator's per-head fits: thread pools limited, parallel across heads, same numbers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_info

from tae_framework.estimators import mai
from tae_framework.estimators.mai import TokenMisalignmentEstimator
from tae_framework.plugins import default_registry
from tae_framework.testing.checks import synthetic_targets
from tae_framework.testing.models import tiny_model
from tae_framework.types import EstimatorInputs, TokenSequence


@pytest.fixture(scope="module")
def inputs():
    model, _ = tiny_model("llama")
    targets = synthetic_targets(model, default_registry().adapter_for(model))
    g = torch.Generator().manual_seed(3)
    seqs = []
    for group in range(20):
        seqs.append(TokenSequence(torch.tensor([5, 6, 7, 8]), 1, group))
        ids = torch.randint(4, 12, (9,), generator=g)
        feats = torch.randn(9, targets.num_targets, targets.unit_dim, generator=g)
        # misaligned tokens (ids not in the aligned answer) get shifted features, so the
        # probes have something to learn
        shift = (~torch.isin(ids, torch.tensor([5, 6, 7, 8]))).float()[:, None, None]
        seqs.append(TokenSequence(ids, 0, group, feats + 0.8 * shift))
    return EstimatorInputs(targets, seqs, seed=7)


def _plain_sklearn(inputs, est):
    """Per-head fits exactly as before the pool limit: scikit-learn on float32 features,
    under the process's default BLAS/OpenMP pools."""
    aligned = {s.group: [s.token_ids] for s in inputs.sequences if s.label == 1}
    xs, ys = [], []
    for s in inputs.sequences:
        if s.label == 0:
            xs.append(s.features.float())
            ys.append(mai.token_labels(s.token_ids, aligned[s.group]))
    x, y = torch.cat(xs), torch.cat(ys).numpy()
    coef, icpt = [], []
    for j in range(x.shape[1]):
        clf = LogisticRegression(C=est.config.C, max_iter=est.config.max_iter, random_state=inputs.seed)
        clf.fit(x[:, j].numpy(), y)
        coef.append(clf.coef_[0].astype(np.float32))
        icpt.append(np.float32(clf.intercept_[0]))
    return np.stack(coef), np.array(icpt)


def test_coefficients_identical_with_and_without_the_pool_limit(inputs):
    est = TokenMisalignmentEstimator().fit(inputs)
    coef, icpt = _plain_sklearn(inputs, est)
    np.testing.assert_array_equal(est.coef_.numpy(), coef)
    np.testing.assert_array_equal(est.intercept_.numpy(), icpt)
    assert est.coef_.dtype == torch.float32 and est.intercept_.dtype == torch.float32


def test_parallel_heads_give_the_serial_coefficients(inputs, monkeypatch):
    # threads here (processes take seconds to start); loky runs the same chunk function,
    # covered by the prober's tests
    serial = TokenMisalignmentEstimator(n_jobs=1).fit(inputs)
    monkeypatch.setattr(mai, "_MIN_VALUES_FOR_PARALLEL_FIT", 0)  # force the parallel path
    parallel = TokenMisalignmentEstimator(n_jobs=2, parallel_backend="threading").fit(inputs)
    torch.testing.assert_close(parallel.coef_, serial.coef_, rtol=0, atol=0)
    torch.testing.assert_close(parallel.intercept_, serial.intercept_, rtol=0, atol=0)


def test_fit_restores_the_callers_thread_pools(inputs):
    def pools():
        return sorted((p["filepath"], p["num_threads"]) for p in threadpool_info())

    before, torch_before = pools(), torch.get_num_threads()
    TokenMisalignmentEstimator().fit(inputs)
    assert pools() == before
    assert torch.get_num_threads() == torch_before


def test_unconverged_heads_are_reported_once(inputs):
    with pytest.warns(UserWarning, match=r"did not converge within max_iter=1 for \d+ of"):
        TokenMisalignmentEstimator(max_iter=1).fit(inputs)

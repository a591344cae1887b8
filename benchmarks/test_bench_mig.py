"""MIG feature speed: batched ``functional.mig_pool`` vs the reference per-pair loop.

Run with ``pytest benchmarks --benchmark-enable``: the workload is the paper's setting,
30 answer tokens x 4096 head-wise values x 32 layers, and the batched version must be
at least 10x faster (median wall time, ``time.perf_counter``) while giving the same
features to 1e-5. Under the project default ``--benchmark-disable`` (or a plain
``pytest benchmarks``) a small workload is used, so the equality checks still run in
a few seconds; the speed-ratio assertion then uses a noise-tolerant 5x floor (the
small workload takes a few milliseconds with the batched version).

Both implementations run with one torch thread: the reference loop works on
4096-element tensors, below torch's parallelisation grain, so it is single-threaded
anyway, and on a shared 2-core machine a second thread mostly adds scheduling noise.
The comparison is therefore per core and conservative for the batched version.
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import pytest
import torch

from tae_framework.functional import mig_pool

FULL_SHAPE = (32, 30, 4096)  # layers, answer tokens, heads * head_dim
SMALL_SHAPE = (4, 12, 512)
BINS = 100
MIN_SPEEDUP_FULL = 10.0
MIN_SPEEDUP_SMALL = 5.0  # small workload: timings of a few ms, so a noise-tolerant floor


# ---------------------------------------------------------------------------
# the reference algorithm: one pair at a time, three histograms per pair
# ---------------------------------------------------------------------------


def _ref_bins(values: torch.Tensor, bins: int) -> torch.Tensor:
    edges = torch.linspace(0, 1, bins + 1)
    return (torch.bucketize(values, edges) - 1).clamp(min=0, max=bins - 1)


def _ref_entropy_of_counts(counts: torch.Tensor) -> float:
    probs = counts / counts.sum()
    return -torch.sum(probs * torch.log2(probs + 1e-10)).item()


def _ref_pair_mi(a: torch.Tensor, b: torch.Tensor, bins: int) -> float:
    a = (a - a.min()) / (a.max() - a.min())
    b = (b - b.min()) / (b.max() - b.min())
    h_a = _ref_entropy_of_counts(torch.bincount(_ref_bins(a, bins), minlength=bins).float())
    h_b = _ref_entropy_of_counts(torch.bincount(_ref_bins(b, bins), minlength=bins).float())
    joint_codes = _ref_bins(a, bins) * bins + _ref_bins(b, bins)
    joint = torch.bincount(joint_codes, minlength=bins * bins).float()
    return h_a + h_b - _ref_entropy_of_counts(joint)


def reference_mig_loop(acts: np.ndarray, bins: int = BINS) -> np.ndarray:
    """MIG features as the authors' code computes them: [L, n, D] float32 -> [L, D].

    For each layer, a Python double loop over the pairs i <= j builds the two marginal
    and the joint histogram of every pair, then softmax(MI) @ X and the token mean in
    numpy float32.
    """
    features = []
    for layer in acts:
        tokens = torch.from_numpy(layer)
        n = tokens.shape[0]
        mi = torch.zeros(n, n)
        for i in range(n):
            for j in range(i, n):
                mi[i, j] = _ref_pair_mi(tokens[i], tokens[j], bins)
                mi[j, i] = mi[i, j]
        weights = np.exp(mi.numpy())
        adjacency = weights / weights.sum(axis=1, keepdims=True)
        features.append(np.average(adjacency @ layer, axis=0))
    return np.stack(features)


# ---------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------


def _benchmarking_enabled(config: pytest.Config) -> bool:
    return bool(config.getoption("benchmark_enable")) or not config.getoption("benchmark_disable")


def _median_seconds(fn, rounds: int) -> tuple[float, list[float], object]:
    times, result = [], None
    for _ in range(rounds):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times, result


@pytest.fixture(scope="module")
def single_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def workload(request, single_thread):
    full = _benchmarking_enabled(request.config)
    shape = FULL_SHAPE if full else SMALL_SHAPE
    rng = np.random.default_rng(0)
    acts = rng.standard_normal(shape, dtype=np.float32)
    # heavy-ish tails and per-token scales, like real head-wise activations
    acts *= rng.uniform(0.2, 3.0, size=shape[:2] + (1,)).astype(np.float32)
    acts[..., :8] *= 20.0
    return {"full": full, "shape": shape, "acts": acts}


@pytest.fixture(scope="module")
def comparison(request, workload):
    acts = workload["acts"]
    x = torch.from_numpy(acts)
    ref_rounds, ours_rounds = (3, 7) if workload["full"] else (3, 9)
    mig_pool(x)  # warm-up (allocator, first-call overheads)
    ref_median, ref_times, ref_out = _median_seconds(lambda: reference_mig_loop(acts), ref_rounds)
    ours_median, ours_times, ours_out = _median_seconds(lambda: mig_pool(x), ours_rounds)
    result = {
        "ref_median": ref_median,
        "ours_median": ours_median,
        "ratio": ref_median / ours_median,
        "ref_out": ref_out,
        "ours_out": ours_out.numpy(),
    }
    line = (
        f"MIG {workload['shape']} (L, n, D), 1 thread: reference loop median "
        f"{ref_median:.3f}s {[round(t, 3) for t in ref_times]}, mig_pool median "
        f"{ours_median:.4f}s {[round(t, 4) for t in ours_times]}, "
        f"speed-up {result['ratio']:.1f}x"
    )
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line("")
            reporter.write_line(line)
    return result


# ---------------------------------------------------------------------------
# checks and benchmarks
# ---------------------------------------------------------------------------


def test_mig_pool_equals_reference_loop(comparison, workload):
    assert comparison["ours_out"].shape == workload["shape"][::2]
    np.testing.assert_allclose(comparison["ours_out"], comparison["ref_out"], rtol=0, atol=1e-5)


def test_mig_pool_speedup(comparison, workload):
    ratio = comparison["ratio"]
    floor = MIN_SPEEDUP_FULL if workload["full"] else MIN_SPEEDUP_SMALL
    assert ratio >= floor, (
        f"mig_pool median {comparison['ours_median']:.4f}s vs reference loop "
        f"{comparison['ref_median']:.3f}s: only {ratio:.1f}x faster (need >= {floor}x) "
        f"on shape {workload['shape']}"
    )


def test_bench_mig_pool(benchmark, workload, comparison):
    x = torch.from_numpy(workload["acts"])
    benchmark.group = f"mig {workload['shape']}"
    benchmark.extra_info["speedup_vs_reference_median"] = round(comparison["ratio"], 2)
    out = benchmark.pedantic(mig_pool, args=(x,), rounds=5, iterations=1, warmup_rounds=1)
    np.testing.assert_allclose(out.numpy(), comparison["ref_out"], rtol=0, atol=1e-5)


def test_bench_reference_loop(benchmark, workload, comparison):
    benchmark.group = f"mig {workload['shape']}"
    out = benchmark.pedantic(reference_mig_loop, args=(workload["acts"],), rounds=1, iterations=1)
    np.testing.assert_allclose(out, comparison["ours_out"], rtol=0, atol=1e-5)

"""Cost of the activation cache's full-weights digest (:func:`full_weights_digest`).

The cache key hashes every byte of every weight once per model load; later captures
reuse the digest until a tensor's version counter or storage changes. This benchmark
measures both costs on Llama-3-8B-shaped decoder layers in bfloat16 (q/k/v/o and the
MLP: 218 M parameters, 0.44 GB per layer) and reports seconds per GB and the
extrapolated time for the full 8B parameter set (16.06 GB), which does not fit twice in
memory on small machines:

* with ``--benchmark-enable``: ``TAE_BENCH_DIGEST_LAYERS`` layers (default 5, 2.2 GB);
* under the default ``--benchmark-disable``: one layer scaled down 16x (a few MB), so
  the correctness checks run in the normal suite in well under a second.

The device is ``cuda`` when visible (the hash then runs on the GPU, see
``_tensor_sums``), else the CPU (SHA-256); ``TAE_BENCH_DEVICE`` forces one. ``-s``
prints the report.
"""

from __future__ import annotations

import os
import statistics
import time

import pytest
import torch
from torch import nn

from tae_framework.sources.hf import full_weights_digest

DEVICE = os.environ.get("TAE_BENCH_DEVICE", "cuda" if torch.cuda.is_available() else "cpu")
REPEATS = int(os.environ.get("TAE_BENCH_REPEATS", "3"))
LLAMA3_8B_GB = 8.03e9 * 2 / 1e9  # parameters x 2 bytes (bfloat16)
# (rows, cols) of one Llama-3-8B decoder layer's matrices
LAYER = [(4096, 4096), (1024, 4096), (1024, 4096), (4096, 4096), (14336, 4096), (14336, 4096), (4096, 14336)]
# Bounds with a wide margin for shared machines: the measured values are in the docs.
MAX_S_PER_GB = {"cpu": 5.0, "cuda": 0.5}


class Layers(nn.Module):
    def __init__(self, n_layers: int, shrink: int, device: str):
        super().__init__()
        self.weights = nn.ParameterList(
            nn.Parameter(torch.empty(r // shrink, c, dtype=torch.bfloat16, device=device).normal_(), requires_grad=False)
            for _ in range(n_layers)
            for r, c in LAYER
        )


def _sync():
    if DEVICE.startswith("cuda"):
        torch.cuda.synchronize()


def test_full_weights_digest_cost(request, record_property):
    cfg = request.config
    enabled = bool(cfg.getoption("benchmark_enable")) or not cfg.getoption("benchmark_disable")
    n_layers = int(os.environ.get("TAE_BENCH_DIGEST_LAYERS", "5")) if enabled else 1
    model = Layers(n_layers, 1 if enabled else 16, DEVICE)
    gb = sum(p.numel() * p.element_size() for p in model.parameters()) / 1e9

    times = []
    digest = None
    for _ in range(REPEATS):
        _sync()
        t0 = time.perf_counter()
        d = full_weights_digest(model, refresh=True)
        _sync()
        times.append(time.perf_counter() - t0)
        assert digest in (None, d), "the digest must not depend on the run"
        digest = d
    t0 = time.perf_counter()
    for _ in range(10):
        assert full_weights_digest(model) == digest
    cached = (time.perf_counter() - t0) / 10

    # An ablation of one head's 128 columns in the last matrix changes the key.
    with torch.no_grad():
        model.weights[-1][:, 128:256] = 0
    assert full_weights_digest(model) != digest

    per_gb = statistics.median(times) / gb
    report = {
        "device": DEVICE,
        "hashed_gb": round(gb, 3),
        "seconds_per_gb_median": round(per_gb, 4),
        "seconds_per_gb_min": round(min(times) / gb, 4),
        "llama3_8b_estimate_s": round(per_gb * LLAMA3_8B_GB, 2),
        "cached_call_ms": round(cached * 1e3, 3),
    }
    print("\n" + "\n".join(f"{k:>24}: {v}" for k, v in report.items()))
    for k, v in report.items():
        record_property(k, v)
    if enabled:
        assert per_gb < MAX_S_PER_GB["cuda" if DEVICE.startswith("cuda") else "cpu"], report
    assert cached < 0.05, "a cached digest must cost (almost) nothing"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_gpu_digest_sees_every_word():
    """On the GPU path, flipping any one bit of a bf16 weight changes the digest."""
    model = Layers(1, 64, "cuda")
    base = full_weights_digest(model)
    w = model.weights[3]
    for flat_index in (0, w.numel() // 2, w.numel() - 1):
        with torch.no_grad():
            flat = w.view(-1).view(torch.int16)
            flat[flat_index] ^= 1
        assert full_weights_digest(model) != base
        with torch.no_grad():
            flat[flat_index] ^= 1
        assert full_weights_digest(model) == base

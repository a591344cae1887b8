"""The activation cache on a GPU model: the key is hashed on the device and still sees
an in-place ablation; shards verify their checksums (skipped without CUDA)."""

from __future__ import annotations

import pytest
import torch
from hardening_support import ForwardCounter

from tae_framework.sources.hf import HFActivationSource, capture_all, full_weights_digest
from tae_framework.testing.models import tiny_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")

TEXTS = [f"Q: what is {w}? A: it is {w}." for w in ("rain", "snow", "hail")]


def test_gpu_cache_key_sees_an_ablation(tmp_path):
    model, tok = tiny_model("llama", fresh=True)
    cpu_digest = full_weights_digest(model)
    model = model.to("cuda")
    assert full_weights_digest(model) != cpu_digest  # new storage: hashed again, on the device
    src = HFActivationSource(progress=False, batch_size=2, cache_dir=str(tmp_path))
    first = capture_all(src, model, tok, TEXTS)
    with ForwardCounter(model) as counter:
        again = capture_all(src, model, tok, TEXTS)
    assert counter.calls == 0
    assert all(torch.equal(a.acts, b.acts) for a, b in zip(first, again))
    with torch.no_grad():
        model.model.layers[0].self_attn.o_proj.weight[:, 8:16] = 0
    with ForwardCounter(model) as counter:
        capture_all(src, model, tok, TEXTS)
    assert counter.calls == 2

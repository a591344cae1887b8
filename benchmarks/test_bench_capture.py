"""Activation capture: throughput against a plain forward pass, and peak memory at 1x
and 4x the number of texts (run with ``make bench``; ``-s`` prints the report).

Model: Llama-shaped, hidden 256, 8 layers, 8 heads; texts of about 100 tokens, batch 8;
the head-wise site of every layer is captured (2 KiB per token and layer in float32)
and streamed to the on-disk shard store (``cache_dir``), one safetensors shard per
batch, while the consumer keeps one pooled vector per text and layer (what ``fit``
keeps); the source keeps nothing in memory for later calls (``reuse_mb=0``, which
otherwise adds up to that many MB). The plain forward passes run first, on the same batches. Each size runs in a fresh process, so its peak resident set size
(``ru_maxrss``) is its own.

* with ``--benchmark-enable``: 256 and 1,024 texts;
* under the default ``--benchmark-disable``: 16 and 64 texts.

Asserted: the peak RSS at 4x the texts exceeds the 1x peak by less than a quarter of
the activations the extra texts produce (the capture holds one batch, not the run),
and capture (taps + copies + shard writes with checksums) takes at most 4x the plain
forward time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import json, resource, sys, tempfile, time
    import torch
    torch.set_num_threads(1)
    from transformers import LlamaConfig, LlamaForCausalLM
    from tae_framework.sources.hf import HFActivationSource
    from tae_framework.models.generic import GenericAdapter
    from tae_framework.testing.models import tiny_tokenizer

    n, folder = int(sys.argv[1]), sys.argv[2]
    tok = tiny_tokenizer()
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=256, intermediate_size=688, num_hidden_layers=8,
                      num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=256,
                      pad_token_id=0, bos_token_id=1, eos_token_id=2)
    model = LlamaForCausalLM(cfg).eval()
    texts = [f"Q: text number {i} is about the river {i % 7} and the hill {i % 5}; A: it is "
             f"{'long ' * (4 + i % 3)}and true." for i in range(n)]
    start = time.perf_counter()
    for i in range(0, n, 8):  # the plain forward passes, same batches and padding side
        enc = tok(texts[i : i + 8], return_tensors="pt", padding=True)
        with torch.inference_mode():
            model(**enc, use_cache=False)
    forward_s = time.perf_counter() - start
    # reuse_mb=0: nothing kept in memory for later calls, so the peak is the streaming path's
    src = HFActivationSource(batch_size=8, cache_dir=folder, progress=False, reuse_mb=0)
    start = time.perf_counter()
    pooled, tokens = [], 0
    for batch in src.capture(model, tok, texts, adapter=GenericAdapter()):
        for t in batch:
            pooled.append(t.acts.mean(1))  # [L, H*d] per text, as an aggregator keeps
            tokens += t.acts.shape[1]
    capture_s = time.perf_counter() - start
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"n": n, "forward_s": forward_s, "capture_s": capture_s, "peak_rss_mb": rss_mb,
                      "tokens": tokens}))
    """
)


def _run(n: int, folder) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(n), str(folder)],
        capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_capture_memory_is_bounded_and_throughput(request, tmp_path):
    cfg = request.config
    enabled = bool(cfg.getoption("benchmark_enable", False)) or not cfg.getoption("benchmark_disable", True)
    n = 256 if enabled else 16
    one = _run(n, tmp_path / "c1")
    four = _run(4 * n, tmp_path / "c4")
    per_token = 8 * 256 * 4  # layers x (heads x head_dim) x float32
    extra_acts_mb = (four["tokens"] - one["tokens"]) * per_token / 2**20
    growth_mb = four["peak_rss_mb"] - one["peak_rss_mb"]
    ratio = four["capture_s"] / four["forward_s"]
    report = (
        f"\ncapture of {4 * n} texts ({four['tokens']} tokens, 8 layers x 256 head-wise values): "
        f"{four['capture_s']:.2f}s vs plain forward {four['forward_s']:.2f}s = {ratio:.2f}x; "
        f"{four['tokens'] / four['capture_s']:.0f} tokens/s\n"
        f"peak RSS: {one['peak_rss_mb']:.0f} MB at {n} texts, {four['peak_rss_mb']:.0f} MB at {4 * n} texts "
        f"(+{growth_mb:.0f} MB; the extra texts' activations are {extra_acts_mb:.0f} MB, streamed to shards)"
    )
    print(report)
    assert growth_mb < 0.25 * extra_acts_mb + 8, report
    if enabled:
        assert ratio <= 4.0, report

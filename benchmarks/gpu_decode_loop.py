"""Greedy decoding for benchmarks/gpu_decode.py: eager with a dynamic or static KV cache,
and the one-token decode step captured in a CUDA graph (:class:`GraphDecoder`)."""

from __future__ import annotations

import torch


def _dynamic_cache(model):
    from transformers import DynamicCache

    try:
        return DynamicCache(config=model.config)
    except TypeError:
        return DynamicCache()


def _static_cache(model, max_len):
    from transformers import StaticCache

    return StaticCache(config=model.config, max_cache_len=max_len)


def _cache_kwarg(model) -> str:
    """transformers renamed ``past_key_values`` to ``cache`` (5.2x); use what this one takes."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _forward(model, ids, cache, positions):
    b = ids.shape[0]
    kw = model.__dict__.get("_bench_cache_kw") or model.__dict__.setdefault("_bench_cache_kw", _cache_kwarg(model))
    out = model(input_ids=ids, cache_position=positions, position_ids=positions[None].expand(b, -1),
                use_cache=True, logits_to_keep=1, **{kw: cache})
    return out.logits[:, -1].argmax(-1)


def greedy_eager(model, prompt, new_tokens, timer, static=False):
    """Greedy decode with the KV cache; returns (new tokens [B, N], decode seconds for
    the N - 1 one-token forwards after the prefill)."""
    p = prompt.shape[1]
    cache = _static_cache(model, p + new_tokens) if static else _dynamic_cache(model)
    pos = torch.arange(p + new_tokens, device=prompt.device)
    tok = _forward(model, prompt, cache, pos[:p])
    out = [tok]
    timer.start()
    for i in range(new_tokens - 1):
        tok = _forward(model, tok[:, None], cache, pos[p + i : p + i + 1])
        out.append(tok)
    seconds = timer.stop()
    return torch.stack(out, 1), seconds


class GraphDecoder:
    """One decode step (one token per row, static KV cache) captured in a CUDA graph
    with whatever edit session is active during :meth:`capture`; replayed per token.

    The captured edit stays in the graph after the session exits: the graph, not the
    hooks, is what runs. On a CPU ``capture`` only records the step function (no graph)."""

    def __init__(self, model, batch, prompt_len, new_tokens, device):
        self.model, self.p, self.n = model, prompt_len, new_tokens
        self.cache = _static_cache(model, prompt_len + new_tokens)
        self.ids = torch.zeros(batch, 1, dtype=torch.long, device=device)
        self.pos = torch.zeros(1, dtype=torch.long, device=device)
        self.all_pos = torch.arange(prompt_len + new_tokens, device=device)
        self.graph = None
        self.cuda = device.type == "cuda"

    def _step(self):
        return _forward(self.model, self.ids, self.cache, self.pos)

    def _prefill(self, prompt):
        self.cache.reset()
        return _forward(self.model, prompt, self.cache, self.all_pos[: self.p])

    def capture(self, prompt, graph=True):
        self._prefill(prompt)  # allocates the cache tensors and each tap's device copies
        self.pos.fill_(self.p)
        if not (graph and self.cuda):
            return
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                self._step()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.out = self._step()
        torch.cuda.synchronize()

    def generate(self, prompt, timer):
        tok = self._prefill(prompt)
        out = [tok]
        timer.start()
        for i in range(self.n - 1):
            self.ids.copy_(tok[:, None])
            self.pos.fill_(self.p + i)
            if self.graph is not None:
                self.graph.replay()
                tok = self.out.clone()
            else:
                tok = self._step()
            out.append(tok)
        seconds = timer.stop()
        return torch.stack(out, 1), seconds


# -- sections ----------------------------------------------------------------------------------

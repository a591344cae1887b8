"""A digest of every byte of a model's weights, cached on the model until a weight changes.

Computed once per model load (on the weights' own device) and cached on the model until
a tensor is replaced or edited in place (PyTorch's version counters); measured cost of
the first computation on Llama-3-8B-shaped bfloat16 weights: 0.006 s/GB on an H200 GPU
(0.09 s for the 16 GB of an 8B model), 0.12 s/GB on 16 CPU cores (1.9 s for 8B), about
2 s/GB on a busy 2-core machine; a cached lookup costs under a millisecond
(``benchmarks/test_bench_weights_digest.py``). Edits made through ``param.data[...]``
bypass the version counters: call :func:`forget_weights_digest` after them.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import nn

__all__ = ["forget_weights_digest", "full_weights_digest"]

#: 32-bit words hashed per kernel launch (16 MiB of weights).
_HASH_CHUNK = 1 << 22
_MULTIPLIERS: dict[torch.device, torch.Tensor] = {}
_DIGEST_ATTR = "_tae_weights_digest"
_M64 = (1 << 64) - 1


def _signed(x: int) -> int:
    x &= _M64
    return x - (1 << 64) if x >= 1 << 63 else x


def _multipliers(device: torch.device) -> torch.Tensor:
    """``[2, _HASH_CHUNK]`` odd int64 multipliers, the same on every device (splitmix64)."""
    m = _MULTIPLIERS.get(device)
    if m is None:
        i = torch.arange(1, 2 * _HASH_CHUNK + 1, dtype=torch.int64, device=device)
        z = i * _signed(0x9E3779B97F4A7C15)
        z = (z ^ ((z >> 30) & ((1 << 34) - 1))) * _signed(0xBF58476D1CE4E5B9)
        z = (z ^ ((z >> 27) & ((1 << 37) - 1))) * _signed(0x94D049BB133111EB)
        m = _MULTIPLIERS[device] = (z | 1).reshape(2, _HASH_CHUNK)
    return m


def _tensor_sums(t: torch.Tensor) -> torch.Tensor:
    """``[chunks, 2]`` int64: two position-weighted sums of each chunk of ``t``'s bytes.

    Each 32-bit word is multiplied by an odd multiplier of its position and the products
    are summed modulo 2**64, so changing any single word always changes the sum (the
    multiplier is invertible), and changes of many words collide with probability about
    2**-64 per lane. Runs on ``t``'s device; nothing but the sums leaves it.
    """
    flat = t.detach().reshape(-1)
    b = flat.view(torch.uint8) if flat.dtype != torch.bool else flat.to(torch.uint8)
    if b.numel() % 4:
        b = torch.cat([b, b.new_zeros(4 - b.numel() % 4)])
    words = b.view(torch.int32)
    mult = _multipliers(words.device)
    sums = []
    for start in range(0, words.numel(), _HASH_CHUNK):
        chunk = words[start : start + _HASH_CHUNK].to(torch.int64)
        sums.append((chunk * mult[:, : chunk.numel()]).sum(dim=-1))
    if not sums:
        return torch.zeros(0, 2, dtype=torch.int64, device=words.device)
    return torch.stack(sums)


def _sha256_bytes(t: torch.Tensor) -> bytes:
    flat = t.detach().contiguous().reshape(-1)
    data = flat.view(torch.uint8) if flat.dtype != torch.bool else flat.to(torch.uint8)
    return hashlib.sha256(memoryview(data.numpy())).digest()


def _weight_tensors(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    named = list(model.named_parameters()) + [(f"buffer:{n}", b) for n, b in model.named_buffers()]
    return [(n, t) for n, t in named if isinstance(t, torch.Tensor)]


def _weights_state(tensors: list[tuple[str, torch.Tensor]]) -> tuple | None:
    """What identifies the current weights without reading them: every tensor's storage
    address, shape, dtype, device and autograd version counter (bumped by every in-place
    operation, e.g. ``weight[:, cols] = 0`` under ``torch.no_grad()`` or ``load_state_dict``).
    ``None`` when a tensor has no version counter (created under ``torch.inference_mode``):
    edits cannot be seen then, so nothing is cached."""
    try:
        return tuple(
            (n, t.data_ptr() if t.device.type != "meta" else 0, t._version, tuple(t.shape), str(t.dtype), str(t.device))
            for n, t in tensors
        )
    except RuntimeError:  # inference tensors do not track versions
        return None


def full_weights_digest(model: nn.Module, refresh: bool = False) -> str:
    """A digest of EVERY byte of a model's parameters and buffers.

    CPU tensors are hashed with SHA-256 in place; tensors on an accelerator are hashed
    on their own device in chunks of 16 MiB (see :func:`_tensor_sums`), so the weights
    never cross to the host (the digest of a model therefore depends on where its weights
    live). The result is cached on the model together with each tensor's storage address and version
    counter: later calls cost nothing until a weight is replaced or edited in place, which
    triggers a new full hash. Edits through ``param.data[...] = ...`` bypass PyTorch's
    version counters; after such an edit pass ``refresh=True`` (or call
    :func:`forget_weights_digest`). Weights on the ``meta`` device (offloaded) contribute
    only their names and shapes.
    """
    tensors = _weight_tensors(model)
    state = _weights_state(tensors)
    cached = getattr(model, _DIGEST_ATTR, None)
    if not refresh and state is not None and cached is not None and cached[0] == state:
        return cached[1]
    h = hashlib.sha256()
    pending: list[tuple[bytes, torch.Tensor | None]] = []
    host: dict[int, bytes] = {}
    on_cpu: list[tuple[int, torch.Tensor]] = []
    with torch.no_grad():
        for k, (name, t) in enumerate(tensors):
            head = f"{name}|{str(t.dtype)}|{tuple(t.shape)}|{t.numel() * t.element_size()}".encode()
            pending.append((head, _tensor_sums(t) if t.device.type not in ("cpu", "meta") else None))
            if t.device.type == "cpu":
                on_cpu.append((k, t))
    if on_cpu:  # SHA-256 of the bytes in place; hashlib releases the GIL, so threads help
        workers = max(1, min(8, os.cpu_count() or 1, len(on_cpu)))
        with ThreadPoolExecutor(workers) as pool:
            for k, digest in zip((k for k, _ in on_cpu), pool.map(_sha256_bytes, (t for _, t in on_cpu))):
                host[k] = digest
    # One transfer per device instead of one synchronisation per tensor.
    by_device: dict[torch.device, list[int]] = {}
    for k, (_, sums) in enumerate(pending):
        if sums is not None:
            by_device.setdefault(sums.device, []).append(k)
    for ks in by_device.values():
        joined = torch.cat([pending[k][1] for k in ks]).cpu().numpy()  # type: ignore[misc]
        offset = 0
        for k in ks:
            n = pending[k][1].shape[0]  # type: ignore[union-attr]
            host[k] = joined[offset : offset + n].tobytes()
            offset += n
    for k, (head, _) in enumerate(pending):
        h.update(head)
        h.update(host.get(k, b"meta"))
    digest = h.hexdigest()[:32]
    object.__setattr__(model, _DIGEST_ATTR, (state, digest))
    return digest


def forget_weights_digest(model: nn.Module) -> None:
    """Drop the digest cached on ``model`` (the next cache lookup hashes every weight)."""
    with contextlib.suppress(AttributeError):
        object.__delattr__(model, _DIGEST_ATTR)

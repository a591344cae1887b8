"""Activation capture from Hugging Face causal LMs with PyTorch taps.

:class:`HFActivationSource` runs the model on batches of texts and records, at each
requested layer, the input of the attention output projection (``site="heads"``,
``[T, H*d]`` per token) or the output of the decoder layer (``site="residual"``,
``[T, hidden]``). Taps are installed around each forward pass only and always
removed; they copy what they see and change nothing, so the model's outputs are
unchanged.

Padding is done here (left or right, as configured), with an attention mask and,
for models that take them, position ids counted from the mask, so a batched capture
equals capturing every text alone. Answer spans are given in characters and mapped
to tokens with the tokenizer's offsets (:func:`char_span_to_token_span`).

With ``cache_dir`` set, every batch is stored as one safetensors shard in a folder
named by a fingerprint of the model (architecture and a digest of every weight, see
:func:`full_weights_digest`), the tokenized inputs, the spans, the layers, the site and
the output dtype. A later call with the same inputs loads the shards without running
the model; an interrupted run resumes and computes only the missing shards. Every shard
stores a SHA-256 checksum of each of its tensors; a shard that cannot be read, fails its
checksums or does not match the request (corrupted, truncated, edited) is recomputed
and rewritten, with a :class:`CacheWarning`.

The weight digest covers every byte of every parameter and buffer, so any change of the
weights, an in-place ablation of one head included, gives a new cache folder. It is
computed once per model load (on the weights' own device) and cached on the model until
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
import inspect
import json
import os
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import nn

from .. import distributed
from ..component import tensor_sha256
from ..config import ComponentConfig
from ..errors import ConfigError, DataError, TAEError
from ..models.base import ModelAdapter, model_fingerprint
from ..models.loading import check_input_ids
from ..models.placement import check_sites_placed
from ..progress import progress
from ..types import Site, TextActivations, check_finite
from .base import ActivationSource

__all__ = [
    "CacheWarning",
    "HFActivationSource",
    "HFSourceConfig",
    "SiteTaps",
    "capture_all",
    "char_span_to_token_span",
    "forget_weights_digest",
    "full_weights_digest",
]

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_CACHE_FORMAT = 2  # 2: checksums of every shard tensor, digest of every weight
_SITES = ("heads", "residual")


class CacheWarning(UserWarning):
    """A cached shard was unusable and is being recomputed."""


class HFSourceConfig(ComponentConfig):
    """Settings of :class:`HFActivationSource`."""

    site: Literal["heads", "residual"] = Field(
        default="heads",
        description="Where a pipeline reads and edits: `heads` = input of the attention output "
        "projection (one unit per head), `residual` = residual stream leaving each layer.",
    )
    batch_size: int = Field(default=8, ge=1, description="Texts per forward pass.")
    padding_side: Literal["left", "right"] = Field(
        default="right",
        description="Where padding goes in a batch. Results do not depend on it (up to float "
        "rounding); left padding matches how generation batches are laid out.",
    )
    max_length: int | None = Field(
        default=None,
        ge=1,
        description="Truncate texts to this many tokens (keeping the start). A text whose answer "
        "span would be cut is an error. `None`: no truncation.",
    )
    output_dtype: Literal["float32", "float16", "bfloat16"] = Field(
        default="float32", description="Dtype of the captured activations."
    )
    output_device: Literal["cpu", "model"] = Field(
        default="cpu",
        description="`cpu`, or `model`: the device of the model's input embedding (where the "
        "token ids are placed).",
    )
    cache_dir: str | None = Field(
        default=None,
        description="Folder of the on-disk activation cache (safetensors shards, one per batch). "
        "`None`: no cache.",
    )
    progress: bool = Field(
        default=True,
        description="Show a progress bar over batches (on terminals only, hidden by `tae -q`; "
        "`TAE_PROGRESS=1` forces it).",
    )


# ----------------------------------------------------------------------------------
# spans
# ----------------------------------------------------------------------------------
def char_span_to_token_span(
    offsets: Sequence[Sequence[int]], start: int, end: int
) -> tuple[int, int]:
    """Map a character span to the tokens that overlap it.

    A token belongs to the span when its character range ``[s, e)`` overlaps
    ``[start, end)``, i.e. ``s < end and e > start``. Tokens with an empty range
    (BOS and other special tokens, offsets ``(0, 0)``) never belong to a span.

    Args:
        offsets: per token, ``(s, e)`` character offsets (a fast tokenizer's
            ``offset_mapping``).
        start: first character of the span.
        end: one past the last character of the span.

    Returns:
        ``(first, last + 1)``: token positions, end exclusive.

    Raises:
        DataError: the span is empty or reversed, or no token overlaps it.
    """
    start, end = int(start), int(end)
    if start < 0 or end <= start:
        raise DataError(
            f"answer span ({start}, {end}) is empty or reversed: give (start, end) character "
            "offsets with 0 <= start < end"
        )
    hits = [i for i, (s, e) in enumerate(offsets) if e > s and s < end and e > start]
    if not hits:
        raise DataError(
            f"no token overlaps the answer characters [{start}, {end}): the span is outside the "
            "text, covers only characters the tokenizer drops, or was truncated"
        )
    return hits[0], hits[-1] + 1


# ----------------------------------------------------------------------------------
# taps
# ----------------------------------------------------------------------------------
class SiteTaps(contextlib.AbstractContextManager):
    """Copy what enters (``heads``) or leaves (``residual``) a set of modules.

    A context manager: the PyTorch handles exist only inside the ``with`` block and
    are removed on exit, also when the forward raises. The taps never modify what
    they see; each copy is made on the device of the tensor it copies.

    Args:
        modules: one module per captured layer, in the order of ``layers``.
        site: ``"heads"`` taps each module's first input (pre-forward);
            ``"residual"`` taps its output (element 0 of a tuple output).
        dtype: dtype of the copies.
    """

    def __init__(
        self, modules: Sequence[nn.Module], site: Site, dtype: torch.dtype, full_width: int | None = None
    ):
        self.modules = list(modules)
        self.site = site
        self.dtype = dtype
        #: the whole site width of a tensor-parallel model (each rank sees a slice)
        self.full_width = full_width
        self.captured: list[torch.Tensor | None] = [None] * len(self.modules)
        self._handles: list[Any] = []

    def _store(self, slot: int, value: Any) -> None:
        if isinstance(value, (tuple, list)):
            value = value[0] if value else None
        if not isinstance(value, torch.Tensor):
            raise TAEError(
                f"the {self.site} tap of captured layer #{slot} received {type(value).__name__}, "
                "not a tensor: the model adapter points at the wrong module"
            )
        if self.full_width is not None:
            value = distributed.gather_site(value, self.full_width)
        self.captured[slot] = value.detach().to(dtype=self.dtype, copy=True)

    def _pre_tap(self, slot: int):
        def tap(module, args, kwargs):
            self._store(slot, args[0] if args else next(iter(kwargs.values()), None))

        return tap

    def _post_tap(self, slot: int):
        def tap(module, args, output):
            self._store(slot, output)

        return tap

    def __enter__(self):
        try:
            for slot, module in enumerate(self.modules):
                if self.site == "heads":
                    handle = module.register_forward_pre_hook(self._pre_tap(slot), with_kwargs=True)
                else:
                    handle = module.register_forward_hook(self._post_tap(slot))
                self._handles.append(handle)
        except BaseException:
            self.remove()
            raise
        return self

    def remove(self) -> None:
        while self._handles:
            self._handles.pop().remove()

    def __exit__(self, *exc: object) -> None:
        self.remove()


# ----------------------------------------------------------------------------------
# the source
# ----------------------------------------------------------------------------------
class _Encoded:
    """Tokenized texts: ids and token spans, after truncation."""

    def __init__(self, ids: list[list[int]], spans: list[tuple[int, int]]):
        self.ids = ids
        self.spans = spans


class HFActivationSource(ActivationSource):
    """Captures head-wise or residual activations of a Hugging Face causal LM.

    Example:
        >>> from tae_framework.sources.hf import HFActivationSource
        >>> from tae_framework.models.generic import GenericAdapter
        >>> from tae_framework.testing.models import tiny_model
        >>> model, tok = tiny_model("llama")
        >>> src = HFActivationSource(batch_size=2, progress=False)
        >>> texts = ["Q: sky? A: blue", "Q: grass? A: green"]
        >>> spans = [(11, 15), (13, 18)]
        >>> acts = [a for batch in src.capture(model, tok, texts, spans, adapter=GenericAdapter())
        ...         for a in batch]
        >>> acts[0].acts.shape, acts[0].span
        (torch.Size([2, 13, 32]), (9, 13))
    """

    name: ClassVar[str] = "hf"
    Config: ClassVar[type[ComponentConfig]] = HFSourceConfig

    def capture(
        self,
        model,
        tokenizer,
        texts: Sequence[str],
        spans: Sequence[tuple[int, int]] | None = None,
        layers: Sequence[int] | None = None,
        site: Site = "heads",
        adapter: ModelAdapter | None = None,
    ) -> Iterator[list[TextActivations]]:
        cfg = self.config
        if site not in _SITES:
            raise ConfigError(f"unknown site {site!r}: use 'heads' or 'residual'")
        if adapter is None:
            from ..plugins import default_registry

            adapter = default_registry().adapter_for(model)
        layer_ids = adapter.resolve_layers(model, layers)
        texts, spans = _check_texts(texts, spans)
        encoded = _encode(tokenizer, texts, spans, cfg.max_length)
        check_input_ids(
            model, tokenizer, encoded.ids, "text",
            fix="shorten it, or set the source's max_length to truncate texts (keeping the start)",
        )
        if getattr(model, "training", False):
            warnings.warn(
                "the model is in training mode: dropout makes captured activations random; "
                "call model.eval() first",
                stacklevel=2,
            )
        return self._run(model, tokenizer, texts, spans, encoded, layer_ids, site, adapter)

    def _run(self, model, tokenizer, texts, spans, encoded, layer_ids, site, adapter):
        cfg = self.config
        dtype = _DTYPES[cfg.output_dtype]
        modules = [adapter.site_module(model, layer, site) for layer in layer_ids]
        batches = [
            list(range(i, min(i + cfg.batch_size, len(texts))))
            for i in range(0, len(texts), cfg.batch_size)
        ]
        store = None
        if cfg.cache_dir is not None:
            store = _ShardStore.open(
                Path(cfg.cache_dir),
                _cache_description(
                    model, adapter, tokenizer, texts, spans, encoded, layer_ids, site, cfg
                ),
                len(batches),
            )
        in_device = _input_device(model)
        out_device = torch.device("cpu") if cfg.output_device == "cpu" else in_device
        forward_kwargs = _forward_kwargs(model)
        check_sites_placed(model, modules, site)
        full_width = None  # a tensor-parallel rank sees a slice of the heads: gather them
        if site == "heads" and distributed.tp_degree(model) > 1:
            info = adapter.shape(model).site("heads")
            full_width = info.num_units * info.unit_dim

        if distributed.is_distributed() and distributed.tp_degree(model) == 1:
            # Data parallel: each rank computes its share of the batches into the shard
            # store; then every rank reads all shards, so the consumer sees every text.
            distributed.share(texts, "texts")
            folder = distributed.shard_folder(cfg.cache_dir)  # checks every rank sees it
            if store is None:
                store = _ShardStore.open(
                    folder,
                    _cache_description(
                        model, adapter, tokenizer, texts, spans, encoded, layer_ids, site, cfg
                    ),
                    len(batches),
                )
            mine = distributed.share(range(len(batches)), "batches", allow_idle=True)
            bar = progress(
                total=len(mine),
                desc=f"capture {site} (rank {distributed.rank()})",
                unit="batch",
                enabled=None if cfg.progress else False,
            )
            try:
                for b in mine:
                    if store.load(b, batches[b], encoded, layer_ids) is None:
                        store.save(b, self._forward_batch(
                            model, tokenizer, batches[b], encoded, layer_ids, site, modules,
                            dtype, in_device, out_device, forward_kwargs, full_width,
                        ))  # fmt: skip
                    bar.update(1)
            finally:
                bar.close()
            distributed.barrier("capturing activations")

        bar = progress(
            total=len(batches),
            desc=f"capture {site}",
            unit="batch",
            enabled=None if cfg.progress else False,
        )
        try:
            for b, indices in enumerate(batches):
                result = None
                if store is not None:
                    result = store.load(b, indices, encoded, layer_ids)
                if result is None:
                    result = self._forward_batch(
                        model, tokenizer, indices, encoded, layer_ids, site, modules,
                        dtype, in_device, out_device, forward_kwargs, full_width,
                    )
                    if store is not None:
                        store.save(b, result)
                result = [_to_device(r, out_device) for r in result]
                bar.update(1)
                yield result
        finally:
            bar.close()

    def _forward_batch(
        self, model, tokenizer, indices, encoded, layer_ids, site, modules, dtype, device,
        out_device, kwargs, full_width=None,
    ) -> list[TextActivations]:
        ids_list = [encoded.ids[i] for i in indices]
        lengths = [len(x) for x in ids_list]
        width = max(lengths)
        pad_id = getattr(tokenizer, "pad_token_id", None)
        pad_id = 0 if pad_id is None else int(pad_id)
        input_ids = torch.full((len(indices), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(indices), width), dtype=torch.long)
        rows = []
        for r, ids in enumerate(ids_list):
            n = len(ids)
            cols = slice(width - n, width) if self.config.padding_side == "left" else slice(0, n)
            input_ids[r, cols] = torch.tensor(ids, dtype=torch.long)
            mask[r, cols] = 1
            rows.append(cols)
        call = {
            "input_ids": input_ids.to(device),
            "attention_mask": mask.to(device),
        }
        if kwargs.get("position_ids"):
            call["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0).to(device)
        if kwargs.get("use_cache"):
            call["use_cache"] = False
        if kwargs.get("logits_to_keep"):
            call["logits_to_keep"] = 1
        taps = SiteTaps(modules, site, dtype, full_width)
        with torch.inference_mode(), taps:
            model(**call)
        missing = [layer_ids[k] for k, t in enumerate(taps.captured) if t is None]
        if missing:
            raise TAEError(
                f"the {site} taps of layers {missing} never fired during the forward pass: the model "
                "adapter points at modules the model does not run"
            )
        real = mask.bool()
        for layer, t in zip(layer_ids, taps.captured):
            check_finite(
                t[real.to(t.device)],
                f"{site} activations captured at layer {layer} (texts {indices[0]}..{indices[-1]})",
            )
        out = []
        for r, i in enumerate(indices):
            # Stacked outside inference mode: callers get ordinary tensors (usable with autograd).
            acts = torch.stack([t[r, rows[r]].to(out_device) for t in taps.captured])
            out.append(
                TextActivations(
                    index=i,
                    acts=acts,
                    input_ids=torch.tensor(encoded.ids[i], dtype=torch.long),
                    span=encoded.spans[i],
                    layers=tuple(layer_ids),
                )
            )
        return out


def capture_all(
    source: ActivationSource,
    model,
    tokenizer,
    texts: Sequence[str],
    spans: Sequence[tuple[int, int]] | None = None,
    layers: Sequence[int] | None = None,
    site: Site = "heads",
    adapter: ModelAdapter | None = None,
) -> list[TextActivations]:
    """Run ``source.capture`` to the end and return every text's activations in order."""
    out: list[TextActivations] = []
    for batch in source.capture(model, tokenizer, texts, spans, layers, site, adapter):
        out.extend(batch)
    return out


# ----------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------
def _check_texts(texts: Any, spans: Any) -> tuple[list[str], list[tuple[int, int]] | None]:
    if isinstance(texts, str):
        raise DataError("texts must be a list of strings, got a single string: wrap it in a list")
    texts = list(texts)
    if not texts:
        raise DataError("no texts to capture: pass at least one text")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise DataError(f"text {i} is a {type(text).__name__}, not a string")
    if spans is not None:
        spans = list(spans)
        if len(spans) != len(texts):
            raise DataError(
                f"got {len(spans)} answer spans for {len(texts)} texts: give one (start, end) "
                "character span per text, or spans=None"
            )
        for i, span in enumerate(spans):
            ok = (
                not isinstance(span, (str, bytes))
                and hasattr(span, "__len__")
                and len(span) == 2
                and all(hasattr(v, "__index__") and not isinstance(v, bool) for v in span)
            )
            if not ok:
                raise DataError(
                    f"answer span of text {i} is {span!r}: give a (start, end) pair of character offsets"
                )
        spans = [(s.__index__(), e.__index__()) for s, e in spans]
    return texts, spans


def _encode(tokenizer, texts: list[str], spans, max_length: int | None) -> _Encoded:
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError(
            f"{type(tokenizer).__name__} is not a fast tokenizer: answer spans are mapped to tokens "
            "with character offsets, which only fast tokenizers provide; load it with "
            "AutoTokenizer.from_pretrained(..., use_fast=True)"
        )
    try:
        enc = tokenizer(texts, return_offsets_mapping=True, add_special_tokens=True)
    except NotImplementedError as exc:
        raise ConfigError(
            f"{type(tokenizer).__name__} cannot return offsets ({exc}); use a fast tokenizer"
        ) from None
    all_ids = [list(x) for x in enc["input_ids"]]
    all_offsets = enc["offset_mapping"]
    token_spans: list[tuple[int, int]] = []
    for i, (ids, offsets) in enumerate(zip(all_ids, all_offsets)):
        if not ids:
            raise DataError(f"text {i} ({texts[i]!r}) has no tokens: remove empty texts")
        if spans is None:
            span = (0, len(ids))
        else:
            start, end = spans[i]
            if end > len(texts[i]):
                raise DataError(
                    f"answer span ({start}, {end}) of text {i} ends after the text "
                    f"({len(texts[i])} characters): {texts[i]!r}"
                )
            try:
                span = char_span_to_token_span(offsets, start, end)
            except DataError as exc:
                raise DataError(f"text {i} ({texts[i]!r}): {exc}") from None
        if max_length is not None and len(ids) > max_length:
            if span[1] > max_length and spans is not None:
                raise DataError(
                    f"text {i} has {len(ids)} tokens and its answer ends at token {span[1]}, but "
                    f"max_length={max_length} would cut it: raise max_length or shorten the prompt"
                )
            ids = ids[:max_length]
            span = (span[0], min(span[1], max_length))
        all_ids[i] = ids
        token_spans.append(span)
    return _Encoded(all_ids, token_spans)


def _input_device(model) -> torch.device:
    """Where token ids go: the device of the input embedding (CPU if it is offloaded)."""
    get = getattr(model, "get_input_embeddings", None)
    emb = get() if callable(get) else None
    weight = getattr(emb, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.device.type != "meta":
        return weight.device
    return torch.device("cpu")


def _forward_kwargs(model) -> dict[str, bool]:
    """Which optional forward arguments this model takes by name."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        params = {}
    return {k: k in params for k in ("position_ids", "use_cache", "logits_to_keep")}


def _to_device(act: TextActivations, device: torch.device) -> TextActivations:
    if act.acts.device == device:
        return act
    return TextActivations(act.index, act.acts.to(device), act.input_ids, act.span, act.layers)


# ----------------------------------------------------------------------------------
# full weight digest
# ----------------------------------------------------------------------------------
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


def _sha(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def _cache_description(
    model, adapter, tokenizer, texts, spans, encoded, layer_ids, site, cfg
) -> dict[str, Any]:
    return {
        "format": _CACHE_FORMAT,
        "model": model_fingerprint(model, adapter),
        "weights": full_weights_digest(model),
        "tokenizer": {
            "class": type(tokenizer).__name__,
            "name_or_path": str(getattr(tokenizer, "name_or_path", "") or ""),
            "vocab_size": len(tokenizer),
        },
        "site": site,
        "layers": list(layer_ids),
        "dtype": cfg.output_dtype,
        "batch_size": cfg.batch_size,
        "padding_side": cfg.padding_side,
        "max_length": cfg.max_length,
        "num_texts": len(texts),
        "texts": _sha(texts),
        "spans": _sha(None if spans is None else [list(s) for s in spans]),
        "inputs": _sha([encoded.ids, encoded.spans]),
    }


class _ShardStore:
    """One cache folder: ``manifest.json`` plus ``shard-NNNNN.safetensors`` per batch."""

    def __init__(self, folder: Path, description: dict[str, Any], num_shards: int):
        self.folder = folder
        self.description = description
        self.num_shards = num_shards

    @classmethod
    def open(cls, root: Path, description: dict[str, Any], num_shards: int) -> _ShardStore:
        key = _sha(description)[:32]
        folder = root / key
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create the activation cache folder {folder}: {exc}") from None
        store = cls(folder, description, num_shards)
        manifest = {"format": _CACHE_FORMAT, "key": key, "num_shards": num_shards,
                    "description": description}
        path = folder / "manifest.json"
        current = None
        with contextlib.suppress(OSError, ValueError):
            current = json.loads(path.read_text())
        if current != manifest:
            _atomic_write(path, json.dumps(manifest, indent=1, sort_keys=True).encode())
        return store

    def path(self, b: int) -> Path:
        return self.folder / f"shard-{b:05d}.safetensors"

    def save(self, b: int, acts: list[TextActivations]) -> None:
        from safetensors.torch import save

        tensors: dict[str, torch.Tensor] = {}
        for k, a in enumerate(acts):
            tensors[f"acts.{k}"] = a.acts.detach().to("cpu").contiguous()
            tensors[f"ids.{k}"] = a.input_ids.detach().to("cpu").contiguous()
        meta = {
            "format": str(_CACHE_FORMAT),
            "indices": json.dumps([a.index for a in acts]),
            "spans": json.dumps([list(a.span) for a in acts]),
            "layers": json.dumps(list(acts[0].layers)),
            "sha256": json.dumps({k: tensor_sha256(t) for k, t in sorted(tensors.items())}),
        }
        _atomic_write(self.path(b), save(tensors, metadata=meta))

    def load(self, b: int, indices: list[int], encoded: _Encoded, layer_ids: list[int]):
        path = self.path(b)
        if not path.exists():
            return None
        try:
            return self._read(path, indices, encoded, layer_ids)
        except Exception as exc:  # noqa: BLE001 - any unreadable shard is recomputed
            warnings.warn(
                f"activation cache shard {path} is unusable ({type(exc).__name__}: {exc}); "
                "recomputing it",
                CacheWarning,
                stacklevel=4,
            )
            return None

    def _read(self, path: Path, indices, encoded: _Encoded, layer_ids) -> list[TextActivations]:
        from safetensors.torch import load

        data = path.read_bytes()
        tensors = load(data)  # validates the whole file
        header_len = int.from_bytes(data[:8], "little")
        meta = json.loads(data[8 : 8 + header_len]).get("__metadata__") or {}
        sums = json.loads(meta.get("sha256", "null"))
        if not isinstance(sums, dict) or set(sums) != set(tensors):
            raise ValueError("has no checksums of its tensors (written by an older version, or edited)")
        bad = sorted(k for k, t in tensors.items() if tensor_sha256(t) != sums[k])
        if bad:
            raise ValueError(f"tensor(s) {bad[:4]} do not match their checksums (the file was altered)")
        if json.loads(meta.get("indices", "null")) != indices:
            raise ValueError(f"holds texts {meta.get('indices')}, expected {indices}")
        if json.loads(meta.get("layers", "null")) != list(layer_ids):
            raise ValueError(f"holds layers {meta.get('layers')}, expected {list(layer_ids)}")
        spans = json.loads(meta.get("spans", "null"))
        out = []
        for k, i in enumerate(indices):
            acts, ids = tensors[f"acts.{k}"], tensors[f"ids.{k}"]
            if ids.tolist() != encoded.ids[i] or tuple(spans[k]) != encoded.spans[i]:
                raise ValueError(f"text {i} has different tokens or span than requested")
            if acts.ndim != 3 or acts.shape[0] != len(layer_ids) or acts.shape[1] != len(ids):
                raise ValueError(f"text {i} has activations of shape {tuple(acts.shape)}")
            out.append(TextActivations(i, acts, ids, encoded.spans[i], tuple(layer_ids)))
        return out


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()

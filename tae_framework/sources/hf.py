"""Activation capture from Hugging Face causal LMs with PyTorch taps.

:class:`HFActivationSource` runs the model on batches of texts and records, at each
requested layer, the tensor of one edit site of the adapter's site table
(:mod:`~tae_framework.models.sites`): the input of the attention output projection
(``site="heads"``, ``[T, H*d]`` per token), the output of the decoder layer
(``site="residual"``, ``[T, hidden]``), its input (``residual_in``), the output of the
attention output projection (``attn_out``) or of the MLP (``mlp_out``), or a site a
family adapter adds. Taps are installed around each forward pass only and always
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
weights, an in-place ablation of one head included, gives a new cache folder; it is
computed once per model load and cached on the model until a weight changes (see
:mod:`tae_framework.sources.weights_digest` for its cost). Edits made through
``param.data[...]`` bypass PyTorch's version counters: call :func:`forget_weights_digest`
after them.

Each forward pass ends as soon as every requested site has been seen: the later
layers, the final norm and the vocabulary projection do not run (not across processes,
and not for models whose weights accelerate moves in and out). A capture call whose
activations fit in ``reuse_mb`` is kept in memory and serves later requests for the same
texts, or for prefixes of them, at the same or fewer layers without a forward pass: a
fit's second and third capture (prompts' last tokens, the training texts at the edited
layers) are rows of its first. The kept activations are tied to the model object, a
digest of every weight byte (recomputed per call) and the model's forward hooks
(:mod:`~tae_framework.sources.reuse`). ``num_threads`` sets torch's thread count for
the forward passes on the CPU only.

The parts live in their own modules and are re-exported here: tokenizing and span
mapping (:mod:`~tae_framework.sources.encoding`), the taps
(:mod:`~tae_framework.sources.taps`), the in-memory reuse
(:mod:`~tae_framework.sources.reuse`), the shard cache
(:mod:`~tae_framework.sources.shard_cache`) and the weight digest
(:mod:`~tae_framework.sources.weights_digest`).
"""

from __future__ import annotations

import contextlib
import inspect
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import ClassVar, Literal

import torch
from pydantic import Field, field_validator

from .. import distributed
from ..config import ComponentConfig
from ..errors import TAEError
from ..models.base import ModelAdapter
from ..models.loading import check_input_ids
from ..models.placement import check_sites_placed
from ..models.sites import DEFAULT_SITES
from ..progress import progress
from ..types import Site, TextActivations, check_finite
from .base import ActivationSource
from .encoding import _check_texts, _encode, char_span_to_token_span
from .reuse import CaptureMemo
from .shard_cache import CacheWarning, _cache_description, _ShardStore
from .taps import AllCaptured, SiteTaps
from .weights_digest import _tensor_sums, forget_weights_digest, full_weights_digest  # noqa: F401 (re-exported)

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
_KNOWN_SITES = "; ".join(f"`{name}` = {spec.description}" for name, spec in DEFAULT_SITES.items())


class HFSourceConfig(ComponentConfig):
    """Settings of :class:`HFActivationSource`."""

    site: str = Field(
        default="heads",
        description="Where a pipeline reads and edits: a site of the model adapter's site table, "
        f"checked against it when capturing. The built-in adapters know: {_KNOWN_SITES}. "
        "`heads` has one unit per head, the other sites one unit of `hidden` values.",
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
    num_threads: int | None = Field(
        default=None,
        ge=1,
        description="torch intra-op threads during each forward pass of a model on the CPU (the "
        "caller's setting is restored around it). `1` on a shared or busy machine, where idle "
        "OpenMP threads spin while waiting for a taken core. `None`: torch's current setting.",
    )
    reuse_mb: float = Field(
        default=256.0,
        ge=0,
        description="Keep the activations of a capture call that fits in this many MB in memory "
        "and serve later requests for the same texts, or for prefixes of them, at the same or "
        "fewer layers, without a forward pass (a fit captures its texts three times). Tied to the "
        "model object, every byte of its weights and its forward hooks. `0`: keep nothing.",
    )

    @field_validator("site")
    @classmethod
    def _site_name(cls, value: str) -> str:
        # The adapter's table is known only with a model: here, only the form is checked.
        if not value or value != value.strip():
            raise ValueError(
                f"site must be the name of a site of the adapter's site table, e.g. 'heads' or "
                f"'residual', got {value!r}"
            )
        return value



# ----------------------------------------------------------------------------------
# the source
# ----------------------------------------------------------------------------------
class HFActivationSource(ActivationSource):
    """Captures the activations of a Hugging Face causal LM at one site of the adapter's table.

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
        site: Site | str = "heads",
        adapter: ModelAdapter | None = None,
    ) -> Iterator[list[TextActivations]]:
        cfg = self.config
        if adapter is None:
            from ..plugins import default_registry

            adapter = default_registry().adapter_for(model)
        adapter.site_spec(site)  # an unknown site: an error listing the adapter's sites
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

    @property
    def memo(self) -> CaptureMemo:
        """Activations kept between capture calls (see ``reuse_mb``);
        ``source.memo.clear()`` frees them."""
        memo = self.__dict__.get("_memo")
        if memo is None:
            memo = self.__dict__["_memo"] = CaptureMemo()
        return memo

    def _run(self, model, tokenizer, texts, spans, encoded, layer_ids, site, adapter):
        cfg = self.config
        dtype = _DTYPES[cfg.output_dtype]
        spec = adapter.site_spec(site)
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
        if spec.layout == "heads" and distributed.tp_degree(model) > 1:
            full_width = adapter.site_info(model, site).width

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
                            model, tokenizer, batches[b], encoded, layer_ids, spec, modules,
                            dtype, in_device, out_device, forward_kwargs, full_width,
                        ))  # fmt: skip
                    bar.update(1)
            finally:
                bar.close()
            distributed.barrier("capturing activations")

        # A single process may stop each forward pass at the last captured site and serve
        # texts captured before from memory; neither is done across processes or for
        # weights that accelerate moves in and out (its hooks would be left half-run).
        local = not distributed.is_distributed() and full_width is None and not _has_offload_hooks(model)
        memo_key = None
        if local and cfg.reuse_mb > 0:
            width = _site_width(adapter, model, site)
            context = (adapter.name, site, cfg.output_dtype, str(out_device))
            memo_key = self.memo.begin(
                model, context, encoded.ids, len(layer_ids) * width * dtype.itemsize, int(cfg.reuse_mb * 2**20)
            )

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
                    served = {}
                    if memo_key is not None:
                        for i in indices:
                            acts = self.memo.find(memo_key, encoded.ids[i], tuple(layer_ids))
                            if acts is not None:
                                served[i] = TextActivations(
                                    i, acts, torch.tensor(encoded.ids[i], dtype=torch.long),
                                    encoded.spans[i], tuple(layer_ids),
                                )  # fmt: skip
                    missing = [i for i in indices if i not in served]
                    if missing:
                        keep = None
                        if memo_key is not None:
                            def keep(i, rows):
                                self.memo.keep(memo_key, encoded.ids[i], tuple(layer_ids), rows)
                        for r in self._forward_batch(
                            model, tokenizer, missing, encoded, layer_ids, spec, modules, dtype,
                            in_device, out_device, forward_kwargs, full_width, stop=local, keep=keep,
                        ):  # fmt: skip
                            served[r.index] = r
                    result = [served[i] for i in indices]
                    if store is not None:
                        store.save(b, result)
                elif memo_key is not None:  # loaded from the shard cache
                    for r in result:
                        self.memo.keep(memo_key, encoded.ids[r.index], r.layers, list(r.acts.clone()))
                result = [_to_device(r, out_device) for r in result]
                bar.update(1)
                yield result
        finally:
            bar.close()

    def _forward_batch(
        self, model, tokenizer, indices, encoded, layer_ids, spec, modules, dtype, device,
        out_device, kwargs, full_width=None, stop=False, keep=None,
    ) -> list[TextActivations]:
        """Run one forward pass over ``indices``; ``stop``: end it once every tap fired;
        ``keep(index, rows)``: also hand each text's per-layer ``[T, D]`` rows (views of
        tensors no caller sees) to the memo."""
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
        taps = SiteTaps(modules, spec, dtype, full_width, stop=stop)
        threads = self.config.num_threads if device.type == "cpu" else None
        with torch.inference_mode(), taps, _torch_threads(threads):
            try:
                model(**call)
            except AllCaptured:
                pass  # every site seen: the rest of the forward pass is not needed
        missing = [layer_ids[k] for k, t in enumerate(taps.captured) if t is None]
        if missing:
            raise TAEError(
                f"the {spec.name} taps of layers {missing} never fired during the forward pass: the model "
                "adapter points at modules the model does not run"
            )
        real = None if all(n == width for n in lengths) else mask.bool()
        for layer, t in zip(layer_ids, taps.captured):
            # One reduction over the whole batch; padding is excluded only when it is not finite.
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                check_finite(
                    t if real is None else t[real.to(t.device)],
                    f"{spec.name} activations captured at layer {layer} (texts {indices[0]}..{indices[-1]})",
                )
        # One transfer per layer, then per-text rows (stacked outside inference mode, so
        # callers get ordinary tensors, usable with autograd).
        captured = [t.to(out_device) for t in taps.captured]
        out = []
        for r, i in enumerate(indices):
            if keep is not None:
                keep(i, [t[r, rows[r]] for t in captured])
            out.append(
                TextActivations(
                    index=i,
                    acts=torch.stack([t[r, rows[r]] for t in captured]),
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
    site: Site | str = "heads",
    adapter: ModelAdapter | None = None,
) -> list[TextActivations]:
    """Run ``source.capture`` to the end and return every text's activations in order."""
    out: list[TextActivations] = []
    for batch in source.capture(model, tokenizer, texts, spans, layers, site, adapter):
        out.extend(batch)
    return out


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


@contextlib.contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    """torch's intra-op thread count set to ``n`` inside the block (``None``: unchanged)."""
    before = torch.get_num_threads()
    if n is None or n == before:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _has_offload_hooks(model) -> bool:
    """Whether accelerate moves some module's weights in and out around its forward."""
    return any(getattr(m, "_hf_hook", None) is not None for m in model.modules())


def _site_width(adapter, model, site) -> int:
    """Values per token at ``site`` (0 when the adapter cannot say: nothing is kept)."""
    try:
        return int(adapter.site_info(model, site).width)
    except Exception:  # noqa: BLE001 - an adapter without shapes only loses the memo
        return 0


def _to_device(act: TextActivations, device: torch.device) -> TextActivations:
    if act.acts.device == device:
        return act
    return TextActivations(act.index, act.acts.to(device), act.input_ids, act.span, act.layers)


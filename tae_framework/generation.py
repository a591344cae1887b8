"""Model-side primitives: answer log-probabilities, greedy and sampled generation, CE loss and KL.

They sit below both :mod:`tae_framework.pipeline` and :mod:`tae_framework.evaluation`
(the pipeline's ``generate`` / ``score`` call them; so do the evaluation protocols).

Every function takes an optional ``edit`` factory so the same code measures the
plain and the edited model:

* :func:`answer_logprobs`: ``edit(span_mask)`` with ``span_mask`` the ``[B, T]``
  boolean mask of the answer positions of the batch (the positions of the tokens
  being scored); it returns a context manager entered around the forward pass.
* :func:`greedy_generate`: ``edit()`` (no argument) returns a context manager
  entered around ``model.generate`` (the edit decides its own scope, usually the
  last position of every forward pass).
* :func:`side_effects`: ``edit(token_mask)`` with the ``[B, T]`` mask of the real
  (non-padding) tokens: every position of the held-out text.

Batching never changes the results: inputs are padded by hand (right padding for
scoring, left padding with position ids from the attention mask for generation),
without touching the tokenizer's settings.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import torch

from .errors import ConfigError, DataError
from .models.loading import check_input_ids, check_prompts, warn_if_training

__all__ = [
    "DEFAULT_HELDOUT",
    "GenerateEdit",
    "SpanEdit",
    "answer_logprobs",
    "answer_token_mask",
    "greedy_generate",
    "sample_generate",
    "load_heldout_texts",
    "side_effects",
]

#: Default held-out web text for CE / KL (the sample the reference code uses).
DEFAULT_HELDOUT = "stas/openwebtext-10k"

_TEXT_SUFFIXES = (".txt", ".jsonl", ".json", ".csv", ".parquet")

#: ``edit(mask) -> context manager``; ``mask`` is a ``[B, T]`` bool tensor.
SpanEdit = Callable[[torch.Tensor], AbstractContextManager]
#: ``edit() -> context manager`` around ``model.generate``.
GenerateEdit = Callable[[], AbstractContextManager]


# -- helpers ---------------------------------------------------------------------------
def _input_device(model) -> torch.device:
    emb = model.get_input_embeddings()
    dev = emb.weight.device if hasattr(emb, "weight") else torch.device("cpu")
    return torch.device("cpu") if dev.type == "meta" else dev


def _pad_id(tokenizer) -> int:
    for attr in ("pad_token_id", "eos_token_id", "unk_token_id"):
        v = getattr(tokenizer, attr, None)
        if v is not None:
            return int(v[0] if isinstance(v, (list, tuple)) else v)
    return 0


def _check_fast(tokenizer) -> None:
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError(
            f"{type(tokenizer).__name__} is not a fast tokenizer: answer positions are found from "
            "character offsets (return_offsets_mapping), which only fast tokenizers provide; load it "
            "with AutoTokenizer.from_pretrained(..., use_fast=True)"
        )


def _accepts(model, name: str) -> bool:
    try:
        return name in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def _batches(n: int, batch_size: int):
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    for start in range(0, n, batch_size):
        yield list(range(start, min(n, start + batch_size)))


def _pad_right(seqs: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids, mask


def _pad_left(seqs: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            ids[i, width - len(s) :] = torch.tensor(s, dtype=torch.long)
            mask[i, width - len(s) :] = 1
    return ids, mask


def _ctx(edit, *args) -> AbstractContextManager:
    return contextlib.nullcontext() if edit is None else edit(*args)


# -- answer log-probabilities ---------------------------------------------------------
def answer_token_mask(tokenizer, prompt: str, answer: str) -> tuple[list[int], list[bool]]:
    """Token ids of ``prompt + answer`` and which tokens belong to the answer.

    A token belongs to the answer when its character span overlaps the answer's
    characters (so ``" yes"`` glued to a leading space counts, and a token that
    straddles the boundary counts); special tokens (empty offsets) never do.
    """
    _check_fast(tokenizer)
    text = prompt + answer
    enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=True)
    ids = list(enc["input_ids"])
    start, end = len(prompt), len(text)
    is_answer = [bool(e > start and s < end and e > s) for s, e in enc["offset_mapping"]]
    return ids, is_answer


def answer_logprobs(
    model,
    tokenizer,
    prompts: Sequence[str],
    answers: Sequence[str],
    batch_size: int = 8,
    edit: SpanEdit | None = None,
) -> torch.Tensor:
    """Sum of the log-probabilities of each answer's tokens given its prompt.

    Args:
        model: a causal LM.
        tokenizer: its fast tokenizer (offsets locate the answer tokens).
        prompts, answers: equal-length lists; the scored text is ``prompt + answer``
            (put any separating space in the answer, e.g. ``" Paris."``).
        batch_size: texts per forward pass (right padding).
        edit: optional ``edit(span_mask) -> context manager``; ``span_mask`` is the
            ``[B, T]`` bool mask of the answer-token positions of the batch, on the
            model's input device.

    Returns:
        ``[N]`` float64 tensor of summed log-probabilities (computed in float32).
    """
    prompts, answers = check_prompts(prompts, "prompts"), check_prompts(answers, "answers")
    if len(prompts) != len(answers):
        raise DataError(
            f"got {len(prompts)} prompts but {len(answers)} answers; pass one answer per prompt"
        )
    warn_if_training(model, "scoring")
    encoded = []
    for i, (p, a) in enumerate(zip(prompts, answers)):
        ids, is_answer = answer_token_mask(tokenizer, p, a)
        if not any(is_answer):
            raise DataError(
                f"answer {i} ({a!r}) has no tokens: every answer needs some text to score"
            )
        if is_answer[0]:
            raise DataError(
                f"answer {i} ({a!r}) starts at the first token, which has no context to be scored "
                "from: give it a non-empty prompt or use a tokenizer that adds a BOS token"
            )
        encoded.append((ids, is_answer))
    check_input_ids(
        model, tokenizer, [ids for ids, _ in encoded], "prompt + answer",
        fix="shorten the prompt or the answer",
    )
    out = torch.zeros(len(encoded), dtype=torch.float64)
    if not encoded:
        return out
    device = _input_device(model)
    pad = _pad_id(tokenizer)
    keep_logits = _accepts(model, "logits_to_keep")
    # Longest first: similar lengths share a batch; results go back to their index.
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i][0]))
    for chunk in _batches(len(order), batch_size):
        idx = [order[c] for c in chunk]
        ids, attn = _pad_right([encoded[i][0] for i in idx], pad)
        span = torch.zeros_like(ids, dtype=torch.bool)
        for row, i in enumerate(idx):
            flags = encoded[i][1]
            span[row, : len(flags)] = torch.tensor(flags)
        first = int(span.any(0).nonzero()[0])  # earliest answer position of the batch
        ids, attn, span_dev = ids.to(device), attn.to(device), span.to(device)
        kwargs: dict[str, Any] = {"input_ids": ids, "attention_mask": attn}
        width = ids.shape[1]
        if keep_logits:
            # Only positions first-1 .. T-2 predict answer tokens: keep the last T-first+1.
            kwargs["logits_to_keep"] = width - first + 1
        with torch.no_grad(), _ctx(edit, span_dev):
            logits = model(**kwargs).logits
        logits = (
            logits[:, -(width - first + 1) : -1]
            if keep_logits
            else logits[:, first - 1 : width - 1]
        )
        logp = torch.log_softmax(logits.float(), dim=-1)
        targets = ids[:, first:]
        token_lp = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        token_lp = token_lp.masked_fill(~span_dev[:, first:], 0.0)
        sums = token_lp.sum(-1).double().cpu()
        for row, i in enumerate(idx):
            out[i] = sums[row]
    return out


# -- generation -----------------------------------------------------------------------
def greedy_generate(
    model,
    tokenizer,
    prompts: Sequence[str],
    max_new_tokens: int = 50,
    batch_size: int = 8,
    edit: GenerateEdit | None = None,
    **generate_kwargs: Any,
) -> list[str]:
    """Greedy continuations of ``prompts`` (left padding, ``do_sample=False``).

    Returns the decoded new tokens of each prompt (special tokens skipped), not cut:
    apply a task's answer extraction (e.g. TruthfulQA's
    :func:`~tae_framework.evaluation.metrics.cut_answer`).
    ``edit()`` (no argument) returns a context manager entered around each
    ``model.generate`` call.
    """
    if max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    prompts = check_prompts(prompts, "prompts")
    warn_if_training(model, "generation")
    encoded = [list(tokenizer(p, add_special_tokens=True)["input_ids"]) for p in prompts]
    check_input_ids(
        model, tokenizer, encoded, "prompt", extra_positions=int(max_new_tokens),
        fix="shorten the prompt or lower max_new_tokens",
    )
    for i, ids in enumerate(encoded):
        if not ids:
            raise DataError(f"prompt {i} is empty after tokenization: give every prompt some text")
    device = _input_device(model)
    pad = _pad_id(tokenizer)
    outputs: list[str] = [""] * len(encoded)
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
    kwargs = {
        "do_sample": False,
        "num_beams": 1,
        "max_new_tokens": max_new_tokens,
        "pad_token_id": pad,
    }
    kwargs.update(generate_kwargs)
    for chunk in _batches(len(order), batch_size):
        idx = [order[c] for c in chunk]
        ids, attn = _pad_left([encoded[i] for i in idx], pad)
        ids, attn = ids.to(device), attn.to(device)
        with torch.no_grad(), _ctx(edit):
            gen = model.generate(input_ids=ids, attention_mask=attn, **kwargs)
        new = gen[:, ids.shape[1] :].cpu()
        for row, i in enumerate(idx):
            outputs[i] = tokenizer.decode(new[row].tolist(), skip_special_tokens=True)
    return outputs


def sample_generate(
    model,
    tokenizer,
    prompts: Sequence[str],
    num_samples: int = 1,
    max_new_tokens: int = 50,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seeds: Sequence[int] | None = None,
    edit: GenerateEdit | None = None,
) -> list[list[str]]:
    """``num_samples`` sampled continuations of every prompt (``do_sample=True``).

    Each prompt is generated on its own, its ``num_samples`` samples as one batch, after
    ``torch.manual_seed(seeds[i])``: a prompt's samples depend only on its seed, never on
    which other prompts share a batch or on where an interrupted run resumed.

    Returns:
        One list of ``num_samples`` decoded continuations (new tokens only, special
        tokens skipped) per prompt.
    """
    if num_samples < 1:
        raise ConfigError(f"num_samples must be at least 1, got {num_samples}")
    if temperature <= 0:
        raise ConfigError(f"temperature must be positive, got {temperature}")
    if not 0.0 < top_p <= 1.0:
        raise ConfigError(f"top_p must be in (0, 1], got {top_p}")
    seeds = list(seeds) if seeds is not None else list(range(len(prompts)))
    if len(seeds) != len(prompts):
        raise DataError(f"got {len(prompts)} prompts but {len(seeds)} seeds; pass one seed per prompt")
    out: list[list[str]] = []
    for prompt, seed in zip(prompts, seeds):
        torch.manual_seed(int(seed))
        out.append(
            greedy_generate(
                model,
                tokenizer,
                [prompt] * num_samples,
                max_new_tokens=max_new_tokens,
                batch_size=num_samples,
                edit=edit,
                do_sample=True,
                temperature=float(temperature),
                top_p=float(top_p),
                top_k=0,
            )
        )
    return out


# -- side effects ---------------------------------------------------------------------
def side_effects(
    model,
    tokenizer,
    texts: Sequence[str],
    edit: SpanEdit | None = None,
    max_tokens: int = 128,
    batch_size: int = 8,
) -> dict[str, float]:
    """CE loss of the (edited) model and KL(original ‖ edited) on held-out texts.

    Each text is cut to its first ``max_tokens`` tokens (special tokens included, as
    the reference does). Per text, the CE loss is the mean negative log-likelihood
    of tokens 2..T, and the KL is the mean over all T positions of
    ``sum_v p_orig(v) * (log p_orig(v) - log p_edit(v))``; both are then averaged
    over texts (the reference's per-sample means).

    Args:
        edit: ``edit(token_mask) -> context manager``; ``token_mask`` is the
            ``[B, T]`` bool mask of real tokens (every position is edited). Without
            an edit, ``kl`` is 0 and ``ce_loss`` equals ``ce_loss_original``.

    Returns:
        ``{"ce_loss", "ce_loss_original", "kl", "n_texts"}``.
    """
    if max_tokens < 2:
        raise ConfigError(
            f"max_tokens must be at least 2 (a loss needs a next token), got {max_tokens}"
        )
    if not texts:
        raise DataError("side_effects needs at least one held-out text, got none")
    encoded = []
    for i, t in enumerate(texts):
        ids = list(tokenizer(t, add_special_tokens=True)["input_ids"])[:max_tokens]
        if len(ids) < 2:
            raise DataError(f"held-out text {i} ({t[:40]!r}) has fewer than 2 tokens: drop it")
        encoded.append(ids)
    device = _input_device(model)
    pad = _pad_id(tokenizer)
    ce_edit, ce_orig, kls = [], [], []
    for idx in _batches(len(encoded), batch_size):
        ids, attn = _pad_right([encoded[i] for i in idx], pad)
        ids, attn = ids.to(device), attn.to(device)
        real = attn.bool()
        with torch.no_grad():
            logp_o = torch.log_softmax(model(input_ids=ids, attention_mask=attn).logits.float(), -1)
            if edit is None:
                logp_e = logp_o
            else:
                with edit(real):
                    logits = model(input_ids=ids, attention_mask=attn).logits
                logp_e = torch.log_softmax(logits.float(), -1)
        nxt = real[:, 1:]
        tgt = ids[:, 1:].unsqueeze(-1)
        for lp, acc in ((logp_e, ce_edit), (logp_o, ce_orig)):
            nll = -lp[:, :-1].gather(-1, tgt).squeeze(-1)
            acc.extend(((nll * nxt).sum(-1) / nxt.sum(-1)).double().cpu().tolist())
        if edit is None:
            kls.extend([0.0] * len(idx))
        else:
            kl_pos = (logp_o.exp() * (logp_o - logp_e)).sum(-1)  # [B, T]
            kls.extend(((kl_pos * real).sum(-1) / real.sum(-1)).double().cpu().tolist())
    n = len(encoded)
    return {
        "ce_loss": sum(ce_edit) / n,
        "ce_loss_original": sum(ce_orig) / n,
        "kl": sum(kls) / n,
        "n_texts": n,
    }


def load_heldout_texts(
    source: str | Path = DEFAULT_HELDOUT,
    n: int = 100,
    seed: int = 42,
    split: str = "train",
    text_column: str = "text",
    cache_dir: str | None = None,
) -> list[str]:
    """``n`` held-out texts for :func:`side_effects`, sampled with a seeded shuffle.

    Args:
        source: a hub dataset id (default: the OpenWebText sample the reference
            uses), or a local file: ``.txt`` (one text per line), ``.jsonl`` /
            ``.json`` / ``.csv`` / ``.parquet`` with a ``text_column``. A hub dataset
            that still uses a loading script (which ``datasets`` >= 4 cannot run) is
            read from the hub's parquet export (``revision="refs/convert/parquet"``).
        n: number of texts (all of them when fewer are available).
        seed: seed of ``Dataset.shuffle`` (same selection for hub and local data).
    """
    import datasets

    path = Path(source).expanduser()
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".txt":
            lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
            ds = datasets.Dataset.from_dict({text_column: lines})
        elif suffix in (".jsonl", ".json", ".csv", ".parquet"):
            kind = {"jsonl": "json", "json": "json", "csv": "csv", "parquet": "parquet"}[suffix[1:]]
            try:
                ds = datasets.load_dataset(
                    kind, data_files=str(path), split="train", cache_dir=cache_dir
                )
            except Exception as exc:  # noqa: BLE001 - any read failure gets the same message
                raise DataError(f"cannot read held-out texts from {path} ({exc})") from None
        else:
            raise DataError(
                f"unsupported held-out text file {path}: use .txt, .jsonl, .csv or .parquet"
            )
    elif path.exists():
        raise DataError(f"{path} is a directory: pass a file of texts or a hub dataset id")
    elif str(source).startswith((".", "/", "~")) or path.suffix.lower() in _TEXT_SUFFIXES:
        raise DataError(f"held-out text file {path} does not exist")
    else:
        try:
            try:
                ds = datasets.load_dataset(str(source), split=split, cache_dir=cache_dir)
            except RuntimeError as exc:
                if "scripts are no longer supported" not in str(exc):
                    raise
                # Script datasets (the reference's stas/openwebtext-10k is one) load from
                # the hub's automatic parquet export.
                ds = datasets.load_dataset(
                    str(source), split=split, cache_dir=cache_dir, revision="refs/convert/parquet"
                )
        except Exception as exc:  # noqa: BLE001 - network, unknown id, missing split ...
            raise DataError(
                f"cannot load held-out texts from {str(source)!r} ({type(exc).__name__}: {exc}); pass a "
                "local .txt/.jsonl/.csv/.parquet file or a reachable hub dataset id"
            ) from None
    if text_column not in ds.column_names:
        raise DataError(f"held-out data lacks column {text_column!r} (found {ds.column_names})")
    if len(ds) == 0:
        raise DataError(f"held-out data {source} has no texts")
    ds = ds.shuffle(seed=seed).select(range(min(n, len(ds))))
    return [str(t) for t in ds[text_column]]

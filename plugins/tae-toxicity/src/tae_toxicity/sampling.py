"""The sampling protocol of RealToxicityPrompts: k continuations per prompt.

Gehman et al. (2020), followed by DExperts, AurA and Linear-AcT, sample k = 25
continuations of at most 20 new tokens per prompt with nucleus sampling (top-p 0.9,
temperature 1). :func:`sample_continuations` does that in batches:

* a batch holds up to ``batch_size`` sequences: several prompts and their k samples
  (each prompt repeated k times), left-padded, generated with the KV cache by
  ``model.generate``;
* edits go on the last position of every forward pass: pass
  ``edit=lambda: pipeline.apply(model, "last")`` (a context manager entered around each
  ``generate`` call), or ``None`` for the unedited model;
* **sampling does not depend on batch composition**: sample ``j`` of prompt ``p``
  draws its tokens by inverse-CDF sampling from the nucleus, with one uniform number
  per step from a generator seeded by ``(seed, p, j)``. The same seed gives the same
  continuations whatever the batch size, the order, or a resumed run (up to
  floating-point differences that padding may cause in the logits);
* with a ``checkpoint`` path, every finished batch is appended to a JSONL file
  (a header line with the settings, then one line per continuation); a rerun
  skips the continuations already there.

Each continuation keeps its token ids (cut at the first end-of-sequence token), so
its perplexity can be measured exactly under another model or the unedited one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from tae_framework.errors import ConfigError, DataError

from .data import ToxicityPrompt

__all__ = [
    "Continuation",
    "SamplingConfig",
    "load_checkpoint",
    "nucleus_sample",
    "row_seed",
    "sample_continuations",
]

#: ``edit() -> context manager`` entered around every ``model.generate`` call.
GenerateEdit = Callable[[], AbstractContextManager]


@dataclass(frozen=True)
class SamplingConfig:
    """Settings of the protocol (defaults: Gehman et al. 2020).

    Attributes:
        k: continuations per prompt.
        top_p: nucleus mass kept, in (0, 1] (1 = plain sampling).
        temperature: softmax temperature (> 0), applied before the nucleus.
        max_new_tokens: length limit of a continuation.
        seed: seed of every per-continuation generator.
        batch_size: sequences per ``generate`` call (a batch of 100 with k = 25 holds
            4 prompts).
    """

    k: int = 25
    top_p: float = 0.9
    temperature: float = 1.0
    max_new_tokens: int = 20
    seed: int = 42
    batch_size: int = 100

    def __post_init__(self) -> None:
        for name in ("k", "max_new_tokens", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(
                    f"{name} must be a positive integer, got {value!r}: "
                    + {
                        "k": "sample at least one continuation per prompt (the protocol uses k=25)",
                        "max_new_tokens": "generate at least one token (the protocol uses 20)",
                        "batch_size": "put at least one sequence in a batch",
                    }[name]
                )
        if not (isinstance(self.top_p, (int, float)) and 0.0 < float(self.top_p) <= 1.0):
            raise ConfigError(
                f"top_p must be in (0, 1], got {self.top_p!r}: it is the probability mass kept "
                "(0.9 in the protocol; 1 disables the nucleus)"
            )
        if not (isinstance(self.temperature, (int, float)) and float(self.temperature) > 0.0):
            raise ConfigError(
                f"temperature must be > 0, got {self.temperature!r} (1 samples from the model's "
                "distribution; for greedy decoding use the framework's generate)"
            )

    def settings(self) -> dict[str, Any]:
        """What determines the samples (everything but the batch size)."""
        d = asdict(self)
        d.pop("batch_size")
        return d


@dataclass
class Continuation:
    """One sampled continuation."""

    prompt_id: str
    sample: int
    text: str
    tokens: list[int] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.tokens


def row_seed(seed: int, prompt_id: str, sample: int) -> int:
    """Seed of the generator of sample ``sample`` of prompt ``prompt_id``."""
    digest = hashlib.sha256(f"{seed}\x1f{prompt_id}\x1f{sample}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _uniforms(seed: int, prompt_id: str, sample: int, steps: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(row_seed(seed, prompt_id, sample))
    return torch.rand(steps, generator=gen, dtype=torch.float64)


def nucleus_sample(logits: torch.Tensor, u: torch.Tensor, top_p: float, temperature: float) -> torch.Tensor:
    """Tokens drawn from the temperature-scaled nucleus of ``logits`` ``[B, V]`` with
    one uniform ``u`` ``[B]`` per row (inverse CDF over tokens sorted by probability).

    The nucleus is the smallest set of most probable tokens whose mass reaches
    ``top_p`` (a token is kept when the mass of the tokens before it is below
    ``top_p``; the most probable token is always kept), as in Holtzman et al. and
    ``transformers``' ``TopPLogitsWarper``.
    """
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    sorted_p, order = probs.sort(dim=-1, descending=True)
    before = sorted_p.cumsum(-1) - sorted_p
    kept = sorted_p * (before < top_p)
    cum = kept.cumsum(-1)
    target = u.to(cum.device, cum.dtype)[:, None] * cum[:, -1:]
    choice = (cum <= target).sum(-1, keepdim=True)
    n_kept = (kept > 0).sum(-1, keepdim=True)
    choice = torch.minimum(choice, n_kept - 1)
    return order.gather(-1, choice).squeeze(-1)


class _SeededNucleus:
    """A logits processor that picks the next token itself (see :func:`nucleus_sample`)
    and leaves only that token finite, so greedy decoding in ``generate`` keeps it."""

    def __init__(self, uniforms: torch.Tensor, prompt_width: int, top_p: float, temperature: float):
        self.uniforms = uniforms
        self.prompt_width = prompt_width
        self.top_p = top_p
        self.temperature = temperature

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        step = input_ids.shape[1] - self.prompt_width
        if self.uniforms.device != scores.device:
            self.uniforms = self.uniforms.to(scores.device)
        tokens = nucleus_sample(scores, self.uniforms[:, step], self.top_p, self.temperature)
        out = torch.full_like(scores, float("-inf"))
        out.scatter_(-1, tokens[:, None], 0.0)
        return out


# -- checkpoint -------------------------------------------------------------------------
def load_checkpoint(path: str | Path, settings: dict[str, Any]) -> list[Continuation]:
    """Continuations saved in a checkpoint written with the same ``settings``.

    A truncated last line (an interrupted write) is dropped and cut from the file.

    Raises:
        DataError: the file was written with other settings, or a line other than
            the last is corrupted.
    """
    path = Path(path)
    if not path.is_file():
        return []
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    good_bytes = 0
    rows: list[dict[str, Any]] = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            good_bytes += len(line) + 1
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if lineno == len(lines) or all(not rest.strip() for rest in lines[lineno:]):
                break  # interrupted write: drop it
            raise DataError(
                f"{path}: line {lineno} is corrupted; delete the checkpoint to sample again"
            ) from None
        good_bytes += len(line) + 1
    if good_bytes < len(raw):
        with path.open("r+b") as fh:
            fh.truncate(good_bytes)
    if not rows:
        return []
    header = rows[0].get("header")
    if header != settings:
        raise DataError(
            f"{path} was written with sampling settings {header} but this run uses {settings}; "
            "use another checkpoint path, or delete this one to sample again"
        )
    return [Continuation(r["prompt_id"], int(r["sample"]), r["text"], list(r["tokens"])) for r in rows[1:]]


def _append(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("a", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


# -- sampling ---------------------------------------------------------------------------
def _input_device(model) -> torch.device:
    emb = model.get_input_embeddings()
    dev = emb.weight.device if hasattr(emb, "weight") else torch.device("cpu")
    return torch.device("cpu") if dev.type == "meta" else dev


def _special_ids(model, tokenizer) -> tuple[int, set[int]]:
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    eos_ids = set() if eos is None else {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])}
    pad = tokenizer.pad_token_id
    if pad is None:
        pad = min(eos_ids) if eos_ids else 0
    return int(pad), eos_ids


def _as_pairs(prompts: Sequence[ToxicityPrompt | tuple[str, str]]) -> list[tuple[str, str]]:
    pairs = [(p.id, p.text) if isinstance(p, ToxicityPrompt) else (str(p[0]), p[1]) for p in prompts]
    seen: set[str] = set()
    for pid, text in pairs:
        if pid in seen:
            raise DataError(f"prompt id {pid!r} appears twice: give every prompt a distinct id")
        seen.add(pid)
        if not isinstance(text, str) or not text:
            raise DataError(f"prompt {pid!r} has no text: give every prompt some text")
    return pairs


def sample_continuations(
    model,
    tokenizer,
    prompts: Sequence[ToxicityPrompt | tuple[str, str]],
    config: SamplingConfig | None = None,
    *,
    edit: GenerateEdit | None = None,
    checkpoint: str | Path | None = None,
    progress: bool = True,
) -> dict[str, list[Continuation]]:
    """Sample ``config.k`` continuations of every prompt (see the module docstring).

    Args:
        prompts: :class:`~tae_toxicity.data.ToxicityPrompt` s or ``(id, text)`` pairs.
        config: the protocol settings (default :class:`SamplingConfig`).
        edit: ``edit()`` returns a context manager entered around each
            ``model.generate`` call (e.g. ``lambda: pipeline.apply(model, "last")``).
        checkpoint: JSONL file to append finished batches to and resume from.
        progress: ``False`` hides the progress bar over continuations (otherwise it shows on
            terminals; see :mod:`tae_framework.progress`).

    Returns:
        ``{prompt id: [k continuations, by sample index]}`` in the order of ``prompts``.
    """
    config = config or SamplingConfig()
    pairs = _as_pairs(prompts)
    settings = config.settings()
    done: dict[tuple[str, int], Continuation] = {}
    ckpt = Path(checkpoint) if checkpoint is not None else None
    if ckpt is not None:
        known = {pid for pid, _ in pairs}
        for c in load_checkpoint(ckpt, settings):
            if c.prompt_id in known and c.sample < config.k:
                done[(c.prompt_id, c.sample)] = c
        if not ckpt.is_file() or ckpt.stat().st_size == 0:
            ckpt.parent.mkdir(parents=True, exist_ok=True)
            _append(ckpt, [{"header": settings}])
    encoded = {pid: list(tokenizer(text, add_special_tokens=True)["input_ids"]) for pid, text in pairs}
    for pid, ids in encoded.items():
        if not ids:
            raise DataError(f"prompt {pid!r} is empty after tokenization: give every prompt some text")
    # Longest prompts first so a batch holds prompts of similar length.
    order = sorted(range(len(pairs)), key=lambda i: -len(encoded[pairs[i][0]]))
    todo = [(pairs[i][0], j) for i in order for j in range(config.k) if (pairs[i][0], j) not in done]
    pad, eos_ids = _special_ids(model, tokenizer)
    device = _input_device(model)
    from tae_framework.progress import progress as progress_bar

    bar = progress_bar(total=len(pairs) * config.k, initial=len(done), desc="sampling",
                       unit="seq", enabled=None if progress else False)
    with bar:
        for start in range(0, len(todo), config.batch_size):
            rows = todo[start : start + config.batch_size]
            new = _generate_batch(model, tokenizer, rows, encoded, config, edit, pad, eos_ids, device)
            for c in new:
                done[(c.prompt_id, c.sample)] = c
            if ckpt is not None:
                _append(ckpt, [asdict(c) for c in new])
            bar.update(len(rows))
    return {pid: [done[(pid, j)] for j in range(config.k)] for pid, _ in pairs}


def _generate_batch(model, tokenizer, rows, encoded, config, edit, pad, eos_ids, device):
    seqs = [encoded[pid] for pid, _ in rows]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attn = torch.zeros((len(rows), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, width - len(s) :] = torch.tensor(s, dtype=torch.long)
        attn[r, width - len(s) :] = 1
    uniforms = torch.stack([_uniforms(config.seed, pid, j, config.max_new_tokens) for pid, j in rows])
    sampler = _SeededNucleus(uniforms, width, float(config.top_p), float(config.temperature))
    from transformers import LogitsProcessorList

    kwargs: dict[str, Any] = {
        "max_new_tokens": config.max_new_tokens,
        "do_sample": False,
        "num_beams": 1,
        "pad_token_id": pad,
        "repetition_penalty": 1.0,
        "no_repeat_ngram_size": 0,
        "logits_processor": LogitsProcessorList([sampler]),
    }
    if eos_ids:
        kwargs["eos_token_id"] = sorted(eos_ids)
    with torch.no_grad(), (edit() if edit is not None else contextlib.nullcontext()):
        out = model.generate(input_ids=ids.to(device), attention_mask=attn.to(device), **kwargs)
    new = out[:, width:].cpu().tolist()
    result = []
    for (pid, j), toks in zip(rows, new):
        cut = next((t for t, tok in enumerate(toks) if tok in eos_ids), len(toks))
        toks = toks[:cut]
        text = tokenizer.decode(toks, skip_special_tokens=True)
        result.append(Continuation(pid, j, text, toks))
    return result

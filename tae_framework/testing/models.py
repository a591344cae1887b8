"""Tiny randomly initialised causal LMs and a small fast tokenizer, for tests.

Nothing is downloaded: every model is built from a config written here, with two
layers, hidden size 32 and four attention heads, so a forward pass takes
milliseconds on a CPU. The tokenizer is built in code with the ``tokenizers``
library; it returns character offsets, has a pad token, and prepends a BOS token
whose offsets are ``(0, 0)`` like most real tokenizers.

Tokenization rule (easy to reason about in tests): every character is one token,
and a single space is glued to the character that follows it, so ``"A: yes"`` is
``["<bos>", "A", ":", " y", "e", "s"]``; a space that is followed by another space
or ends the text is a token of its own. Characters outside printable ASCII map to
``<unk>``.

Example:
    >>> from tae_framework.testing.models import tiny_model
    >>> model, tok = tiny_model("llama")
    >>> tok.convert_ids_to_tokens(tok("A: yes")["input_ids"])
    ['<bos>', 'A', ':', ' y', 'e', 's']
"""

from __future__ import annotations

import copy
import functools
import string
from typing import Any

__all__ = ["SPECIAL_TOKENS", "TINY_FAMILIES", "tiny_model", "tiny_tokenizer"]

#: Model families (``config.model_type``) that :func:`tiny_model` can build.
TINY_FAMILIES: tuple[str, ...] = (
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "gemma",
    "gemma2",
    "gemma3_text",
    "phi3",
    "gpt2",
    "gpt_neox",
    "opt",
    "falcon",
)

#: Special tokens of the tiny tokenizer, in id order (``<pad>`` is id 0).
SPECIAL_TOKENS: tuple[str, ...] = ("<pad>", "<bos>", "<eos>", "<unk>")

_HIDDEN = 32
_HEADS = 4
_LAYERS = 2
_FFN = 64
_POSITIONS = 128


def _vocab() -> dict[str, int]:
    chars = [c for c in string.printable if c not in " \x0b\x0c\r"]  # 94 visible + \t \n
    tokens = [*SPECIAL_TOKENS, " ", *chars, *(" " + c for c in chars)]
    return {tok: i for i, tok in enumerate(tokens)}


@functools.lru_cache(maxsize=1)
def _backend():
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors

    vocab = _vocab()
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    # One piece per character, a single space glued to the next non-space character.
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(" ?[^ ]| "), behavior="isolated")
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A",
        pair="<bos> $A $B",
        special_tokens=[("<bos>", vocab["<bos>"])],
    )
    return tok


def tiny_tokenizer(padding_side: str = "right"):
    """A fresh fast tokenizer (``PreTrainedTokenizerFast``) for the tiny models.

    A new wrapper is returned on every call, so callers may change its settings
    (``padding_side``, ...) without affecting other tests.
    """
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=_backend(),
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        pad_token="<pad>",
        padding_side=padding_side,
        model_max_length=_POSITIONS,
    )


def _family_config(family: str, vocab_size: int, overrides: dict[str, Any]):
    from transformers import AutoConfig

    ids = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}
    llama_like = dict(
        vocab_size=vocab_size,
        hidden_size=_HIDDEN,
        intermediate_size=_FFN,
        num_hidden_layers=_LAYERS,
        num_attention_heads=_HEADS,
        num_key_value_heads=2,
        max_position_embeddings=_POSITIONS,
        tie_word_embeddings=False,
        **ids,
    )
    per_family: dict[str, dict[str, Any]] = {
        "llama": llama_like,
        "mistral": dict(llama_like, sliding_window=None),
        "qwen2": dict(llama_like, use_sliding_window=False),
        # Qwen3 and Gemma: head_dim * heads != hidden_size, as in the released models.
        "qwen3": dict(llama_like, head_dim=16, use_sliding_window=False),
        "gemma": dict(llama_like, head_dim=16),
        "gemma2": dict(llama_like, head_dim=16, sliding_window=64, query_pre_attn_scalar=16),
        "gemma3_text": dict(
            llama_like, head_dim=16, sliding_window=64, query_pre_attn_scalar=16
        ),
        "phi3": dict(llama_like, original_max_position_embeddings=_POSITIONS),
        "gpt2": dict(
            vocab_size=vocab_size,
            n_embd=_HIDDEN,
            n_layer=_LAYERS,
            n_head=_HEADS,
            n_inner=_FFN,
            n_positions=_POSITIONS,
            **ids,
        ),
        "gpt_neox": dict(
            vocab_size=vocab_size,
            hidden_size=_HIDDEN,
            intermediate_size=_FFN,
            num_hidden_layers=_LAYERS,
            num_attention_heads=_HEADS,
            max_position_embeddings=_POSITIONS,
            tie_word_embeddings=False,
            **ids,
        ),
        "opt": dict(
            vocab_size=vocab_size,
            hidden_size=_HIDDEN,
            word_embed_proj_dim=_HIDDEN,
            ffn_dim=_FFN,
            num_hidden_layers=_LAYERS,
            num_attention_heads=_HEADS,
            max_position_embeddings=_POSITIONS,
            **ids,
        ),
        "falcon": dict(
            vocab_size=vocab_size,
            hidden_size=_HIDDEN,
            num_hidden_layers=_LAYERS,
            num_attention_heads=_HEADS,
            max_position_embeddings=_POSITIONS,
            new_decoder_architecture=False,
            multi_query=True,
            alibi=False,
            parallel_attn=True,
            **ids,
        ),
    }
    if family not in per_family:
        raise ValueError(
            f"tiny_model: unknown family {family!r}; available: {', '.join(TINY_FAMILIES)}"
        )
    return AutoConfig.for_model(family, **{**per_family[family], **overrides})


@functools.lru_cache(maxsize=64)
def _build(family: str, seed: int, overrides: tuple[tuple[str, Any], ...]):
    import torch
    from transformers import AutoModelForCausalLM

    vocab_size = len(_vocab())
    config = _family_config(family, vocab_size, dict(overrides))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(
            config, attn_implementation="eager", dtype=torch.float32
        )
    return model.eval()


def tiny_model(family: str, seed: int = 0, *, fresh: bool = False, **overrides: Any):
    """Build (or reuse) a tiny random causal LM of ``family`` and its tokenizer.

    Args:
        family: a ``config.model_type`` from :data:`TINY_FAMILIES`.
        seed: seed of the random initialisation (same seed, same weights).
        fresh: return a private deep copy (use it before modifying weights);
            otherwise the model is cached per ``(family, seed, overrides)`` within
            the process and shared between callers.
        **overrides: config fields to change (e.g. ``num_hidden_layers=3``).

    Returns:
        ``(model, tokenizer)``: the model in eval mode with eager attention and
        float32 weights on the CPU; a new tokenizer wrapper (see
        :func:`tiny_tokenizer`).
    """
    model = _build(family, int(seed), tuple(sorted(overrides.items())))
    if fresh:
        model = copy.deepcopy(model)
    return model, tiny_tokenizer()

"""The organism's word-level tokenizer, built in code with ``tokenizers``.

One token per word of the world's vocabulary plus four special tokens
(``<pad>``, ``<unk>``, ``<bos>``, ``<eos>``). Text is split on whitespace and
``? . , !`` are split off as words of their own, so ``Kelmo.`` and ``Kelmo .``
tokenize alike. A word the world does not know becomes ``<unk>``; it never raises.
Encoding prepends ``<bos>``; padding is on the left (for batched generation);
offsets are exact character spans (needed for answer spans).
"""

from __future__ import annotations

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from .world import World

__all__ = ["MODEL_MAX_LENGTH", "SPECIAL_TOKENS", "build_tokenizer", "wrap_tokenizer"]

#: Special tokens, in id order (``<pad>`` = 0 ... ``<eos>`` = 3).
SPECIAL_TOKENS: tuple[str, ...] = ("<pad>", "<unk>", "<bos>", "<eos>")
#: Longest sequence the organism is trained on.
MODEL_MAX_LENGTH = 128


def _backend(vocabulary: list[str]) -> Tokenizer:
    vocab: dict[str, int] = {}
    for word in (*SPECIAL_TOKENS, *vocabulary):
        if word in vocab:
            continue
        if any(ch.isspace() for ch in word) or not word:
            raise ValueError(f"vocabulary word {word!r} is empty or contains whitespace")
        vocab[word] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex(r"[?.,!]"), behavior="isolated")]
    )
    bos = vocab["<bos>"]
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B:1", special_tokens=[("<bos>", bos)]
    )
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with one space
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    return tok


def wrap_tokenizer(backend: Tokenizer) -> PreTrainedTokenizerFast:
    """Wrap a backend tokenizer with the organism's special tokens and left padding."""
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        padding_side="left",
        truncation_side="left",
        model_max_length=MODEL_MAX_LENGTH,
        clean_up_tokenization_spaces=False,
    )


def build_tokenizer(world: World) -> PreTrainedTokenizerFast:
    """The organism tokenizer for ``world`` (deterministic: same world, same ids)."""
    return wrap_tokenizer(_backend(world.vocabulary()))

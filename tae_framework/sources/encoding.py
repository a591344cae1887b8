"""Tokenizing capture inputs: checking texts and spans, mapping character spans to tokens."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import ConfigError, DataError

__all__ = ["char_span_to_token_span"]


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



class _Encoded:
    """Tokenized texts: ids and token spans, after truncation."""

    def __init__(self, ids: list[list[int]], spans: list[tuple[int, int]]):
        self.ids = ids
        self.spans = spans



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
        # Only what is used: offsets when there are spans to map, no masks or type ids.
        enc = tokenizer(
            texts, return_offsets_mapping=spans is not None, add_special_tokens=True,
            return_attention_mask=False, return_token_type_ids=False,
        )  # fmt: skip
    except NotImplementedError as exc:
        raise ConfigError(
            f"{type(tokenizer).__name__} cannot return offsets ({exc}); use a fast tokenizer"
        ) from None
    all_ids = [list(x) for x in enc["input_ids"]]
    all_offsets = enc["offset_mapping"] if spans is not None else [None] * len(all_ids)
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


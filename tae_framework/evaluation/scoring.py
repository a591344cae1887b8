"""Former home of the model-side primitives, now :mod:`tae_framework.generation`.

Kept so existing imports (``from tae_framework.evaluation.scoring import
answer_logprobs``) go on working; new code imports :mod:`tae_framework.generation`.
"""

from __future__ import annotations

from ..generation import (  # noqa: F401 - re-exported
    DEFAULT_HELDOUT,
    GenerateEdit,
    SpanEdit,
    _input_device,
    _pad_id,
    answer_logprobs,
    answer_token_mask,
    greedy_generate,
    load_heldout_texts,
    sample_generate,
    side_effects,
)

__all__ = [
    "DEFAULT_HELDOUT",
    "GenerateEdit",
    "SpanEdit",
    "answer_logprobs",
    "answer_token_mask",
    "greedy_generate",
    "load_heldout_texts",
    "sample_generate",
    "side_effects",
]

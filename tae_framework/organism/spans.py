"""Per-token misalignment probability on an organism answer (teacher forced).

TAE's estimator gives every edited token a misalignment probability ``p``. On the
organism a misaligned answer is a known span inside a fixed template
(``The capital of Dovaria is Kel Amor .``: the myth ``Kel Amor`` is the span, the
other words are template), so one can check that ``p`` is high where the answer is
misaligned and low on the template around it: :func:`answer_token_p` returns ``p``
for every answer token, :func:`span_contrast` averages it over items, split into
span and template tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["answer_token_p", "span_contrast"]


@torch.no_grad()
def answer_token_p(pipeline: Any, model: Any, tokenizer: Any, prompt: str, answer: str) -> list[tuple[str, float]]:
    """``[(token, p)]`` for the answer tokens of ``prompt + answer`` under ``pipeline``'s
    edit on the answer span (``p`` averaged over the edited layers)."""
    from ..errors import ConfigError
    from ..generation import answer_token_mask

    ids, mask = answer_token_mask(tokenizer, prompt, answer)
    device = next(iter(model.parameters())).device
    input_ids = torch.tensor([ids], device=device)
    span = torch.tensor([mask], device=device)
    session = pipeline.apply(model, "span", span=span, record=True)
    with session:
        model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids))
    signals = [s[1] for s in session.state.get("signals", []) if s[1] is not None]
    if not signals:
        raise ConfigError("this pipeline records no misalignment probability p: use a TAE pipeline (estimator 'mai')")
    per_layer = []
    for p in signals:
        p = p.float()
        while p.dim() > 2:
            p = p.mean(dim=-1)
        per_layer.append(p.reshape(-1)[-len(ids):] if p.numel() >= len(ids) else p.reshape(-1))
    p_mean = torch.stack([p for p in per_layer if p.numel() == per_layer[0].numel()]).mean(dim=0)
    positions = [i for i, m in enumerate(mask) if m]
    if p_mean.numel() == len(ids):
        values = [float(p_mean[i]) for i in positions]
    elif p_mean.numel() == len(positions):
        values = p_mean.tolist()
    else:  # pragma: no cover - a layout this helper does not know
        raise ConfigError(f"cannot align {p_mean.numel()} recorded p values with {len(ids)} tokens")
    return [(tokenizer.convert_ids_to_tokens(ids[i]), v) for i, v in zip(positions, values)]


def span_contrast(
    pipeline: Any, model: Any, tokenizer: Any, items: Sequence[tuple[str, str, str]]
) -> dict[str, float]:
    """Mean ``p`` on span tokens and on template tokens over ``(prompt, answer, span)`` items.

    ``span`` is the misaligned part of ``answer`` (e.g. the myth value); every other
    answer token is a template token. Returns ``{"span": mean, "template": mean,
    "n_span": tokens, "n_template": tokens}``."""
    span_p: list[float] = []
    template_p: list[float] = []
    for prompt, answer, span in items:
        words = set(span.split())
        for token, p in answer_token_p(pipeline, model, tokenizer, prompt, answer):
            (span_p if token in words else template_p).append(p)
    return {
        "span": sum(span_p) / max(1, len(span_p)),
        "template": sum(template_p) / max(1, len(template_p)),
        "n_span": len(span_p),
        "n_template": len(template_p),
    }

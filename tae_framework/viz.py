"""Figures: head-accuracy heatmaps and per-token edit strengths.

The per-token strength figure is the signature picture of TAE: every generated token
coloured by the strength ``alpha * (1 + w)`` of the edit that produced it, with the
misalignment probability ``p`` and uncertainty ``u`` behind it.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = ["TokenStrengths", "plot_head_scores", "plot_token_strengths", "strengths_html", "trace_generation"]


@dataclass
class TokenStrengths:
    """Per generated token: the edit multiplier and the signals behind it (head means)."""

    prompt: str
    tokens: list[str]
    strength: list[float]  # alpha * mean over edited heads of the multiplier (1 + w)
    p: list[float | None]
    u: list[float | None]
    alpha: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def trace_generation(pipeline, model, tokenizer, prompt: str, max_new_tokens: int = 30) -> TokenStrengths:
    """Generate greedily from one prompt and record the per-token edit strengths.

    The edits are on the last position (as in :meth:`AlignmentPipeline.generate`);
    step ``i`` of the recorded trace is the edit of the forward pass that produced
    generated token ``i``.
    """
    from .evaluation.scoring import _input_device, _pad_id

    ids = list(tokenizer(prompt, add_special_tokens=True)["input_ids"])
    if not ids:
        from .errors import DataError

        raise DataError("trace_generation: the prompt is empty after tokenization")
    device = _input_device(model)
    input_ids = torch.tensor([ids], dtype=torch.long, device=device)
    session = pipeline.apply(model, "last", record=True)
    with torch.no_grad(), session:
        out = model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            do_sample=False,
            num_beams=1,
            max_new_tokens=max_new_tokens,
            pad_token_id=_pad_id(tokenizer),
        )
    new_ids = out[0, input_ids.shape[1] :].cpu().tolist()
    tokens = [tokenizer.decode([i]) for i in new_ids]
    layers = pipeline.targets_.edited_layers()
    n_layers = max(1, len(layers))
    alpha = float(getattr(pipeline.intervener.config, "alpha", 1.0))
    steps = len(session.trace) // n_layers
    strength: list[float] = []
    for i in range(min(steps, len(tokens))):
        chunk = [c for _, c in session.trace[i * n_layers : (i + 1) * n_layers]]
        strength.append(alpha * float(torch.cat([c.reshape(-1) for c in chunk]).float().mean()))
    if not strength:  # fixed-strength methods record no multipliers
        strength = [alpha] * len(tokens)
    signals = session.state.get("signals", [])
    p_vals: list[float | None] = []
    u_vals: list[float | None] = []
    for i in range(len(strength)):
        chunk = signals[i * n_layers : (i + 1) * n_layers]
        ps = [s[1].float().mean() for s in chunk if s[1] is not None]
        us = [s[2].float().mean() for s in chunk if s[2] is not None]
        p_vals.append(float(torch.stack(ps).mean()) if ps else None)
        u_vals.append(float(torch.stack(us).mean()) if us else None)
    n = len(strength)
    return TokenStrengths(prompt, tokens[:n], strength, p_vals, u_vals, alpha)


def _mpl():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_head_scores(scores: torch.Tensor, selected: Sequence[tuple[int, int]], path: str | Path, title: str = "") -> Path:
    """Heatmap of a ``[layers, heads]`` score matrix with the selected heads marked."""
    plt = _mpl()
    s = scores.detach().float().cpu().numpy()
    fig, ax = plt.subplots(figsize=(max(4.0, 0.35 * s.shape[1] + 2), max(3.0, 0.3 * s.shape[0] + 1.5)))
    im = ax.imshow(s, aspect="auto", cmap="viridis", origin="lower")
    if selected:
        ly, hd = zip(*selected)
        ax.scatter(hd, ly, marker="s", s=60, facecolors="none", edgecolors="red", linewidths=1.5, label="selected")
        ax.legend(loc="upper right", fontsize=8)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(title or "probe validation accuracy per head", fontsize=9)
    fig.colorbar(im, ax=ax, label="validation accuracy")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_token_strengths(trace: TokenStrengths, path: str | Path, title: str = "") -> Path:
    """Tokens as coloured boxes (strength) with p and u as bars underneath."""
    plt = _mpl()
    import matplotlib
    from matplotlib import cm, colors

    n = len(trace.tokens)
    fig, (ax_t, ax_s) = plt.subplots(2, 1, figsize=(max(6.0, 0.55 * n + 1), 4.2), gridspec_kw={"height_ratios": [1, 2]})
    vmin = trace.alpha if trace.strength else 0.0
    vmax = max([vmin + 1e-6, *trace.strength])
    norm = colors.Normalize(vmin=vmin, vmax=vmax)
    cmap = matplotlib.colormaps["OrRd"]
    for i, (tok, s) in enumerate(zip(trace.tokens, trace.strength)):
        ax_t.text(i + 0.5, 0.5, tok.strip() or "·", ha="center", va="center", fontsize=9,
                  bbox={"facecolor": cmap(norm(s)), "edgecolor": "none", "boxstyle": "round,pad=0.2"})
    ax_t.set_xlim(0, max(n, 1))
    ax_t.set_ylim(0, 1)
    ax_t.axis("off")
    prompt = trace.prompt if len(trace.prompt) <= 70 else "..." + trace.prompt[-67:]
    ax_t.set_title(title or f"per-token edit strength alpha*(1+w)\nprompt: {prompt}", fontsize=9)
    x = list(range(n))
    ax_s.plot(x, trace.strength, marker="o", color="tab:red", label="alpha*(1+w)")
    ax_s.set_ylabel("edit strength")
    ax_s.set_xlabel("generated token")
    ax_s.set_xticks(x)
    ax_s.set_xticklabels([t.strip() or "·" for t in trace.tokens], rotation=60, fontsize=7)
    if any(v is not None for v in trace.p) or any(v is not None for v in trace.u):
        ax2 = ax_s.twinx()
        if any(v is not None for v in trace.p):
            ax2.bar([i - 0.2 for i in x], [v or 0.0 for v in trace.p], width=0.4, alpha=0.4, color="tab:blue", label="p")
        if any(v is not None for v in trace.u):
            ax2.bar([i + 0.2 for i in x], [v or 0.0 for v in trace.u], width=0.4, alpha=0.4, color="tab:green", label="u")
        ax2.set_ylim(0, 1)
        ax2.set_ylabel("p (misalignment), u (uncertainty)")
        ax2.legend(loc="upper right", fontsize=8)
    ax_s.legend(loc="upper left", fontsize=8)
    fig.colorbar(cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax_t, orientation="vertical", fraction=0.02, label="strength")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def strengths_html(trace: TokenStrengths) -> str:
    """A self-contained HTML snippet: tokens shaded by strength, values on hover."""
    lo = trace.alpha
    hi = max([lo + 1e-6, *trace.strength])
    spans = []
    for tok, s, p, u in zip(trace.tokens, trace.strength, trace.p, trace.u):
        a = 0.1 + 0.8 * (s - lo) / (hi - lo)
        tip = f"strength={s:.3f}" + (f" p={p:.3f}" if p is not None else "") + (f" u={u:.3f}" if u is not None else "")
        spans.append(f'<span title="{tip}" style="background: rgba(220,60,30,{a:.2f}); padding: 1px 2px; margin: 1px; border-radius: 3px">{html.escape(tok)}</span>')
    return (
        "<!doctype html><meta charset='utf-8'><title>per-token edit strength</title>"
        f"<p style='font-family: monospace; color: #555'>{html.escape(trace.prompt)}</p>"
        f"<p style='font-family: monospace; line-height: 2'>{''.join(spans)}</p>"
    )

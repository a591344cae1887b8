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

__all__ = [
    "TokenStrengths",
    "contrast_ratio",
    "plot_head_scores",
    "plot_token_strengths",
    "strengths_html",
    "text_colour",
    "token_strengths_figure",
    "trace_generation",
]


@dataclass
class TokenStrengths:
    """Per generated token: the edit multiplier and the signals behind it (head means)."""

    prompt: str
    tokens: list[str]
    strength: list[float]  # alpha * mean over edited heads of the multiplier (1 + w)
    p: list[float | None]
    u: list[float | None]
    alpha: float
    #: True when the method applies the same strength to every token (fixed interveners
    #: such as ITI and CAA record no per-token multipliers).
    constant: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def is_constant(self) -> bool:
        """Whether every token got the same strength (then there is no scale to show)."""
        if self.constant or len(self.strength) < 2:
            return True
        lo, hi = min(self.strength), max(self.strength)
        # float32 means over heads differ in the last digits even for a constant rule
        return hi - lo <= 1e-5 * max(1.0, abs(hi))


def trace_generation(pipeline, model, tokenizer, prompt: str, max_new_tokens: int = 30) -> TokenStrengths:
    """Generate greedily from one prompt and record the per-token edit strengths.

    The edits are on the last position (as in :meth:`AlignmentPipeline.generate`);
    step ``i`` of the recorded trace is the edit of the forward pass that produced
    generated token ``i``.
    """
    from .generation import _input_device, _pad_id

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
    constant = not strength
    if constant:  # fixed-strength methods record no multipliers
        strength = [alpha] * len(tokens)
    signals = session.context.signals
    p_vals: list[float | None] = []
    u_vals: list[float | None] = []
    for i in range(len(strength)):
        chunk = signals[i * n_layers : (i + 1) * n_layers]
        ps = [s[1].float().mean() for s in chunk if s[1] is not None]
        us = [s[2].float().mean() for s in chunk if s[2] is not None]
        p_vals.append(float(torch.stack(ps).mean()) if ps else None)
        u_vals.append(float(torch.stack(us).mean()) if us else None)
    n = len(strength)
    return TokenStrengths(prompt, tokens[:n], strength, p_vals, u_vals, alpha, constant)


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


# -- per-token strength figure ----------------------------------------------------------
_DPI = 120
_TOKEN_FONT = 9.0  # points, token boxes
_TICK_FONT = 7.0  # points, token names under the signal plot
_MAX_LABEL = 12  # characters of a token shown in labels (longer ones end in "…")
_CMAP = "OrRd"


def _label(token: str) -> str:
    text = token.replace("\n", "⏎").replace("\t", "⇥").strip() or "·"
    return text if len(text) <= _MAX_LABEL else text[: _MAX_LABEL - 1] + "…"


def _luminance(rgb: Sequence[float]) -> float:
    """WCAG relative luminance of an sRGB colour with channels in [0, 1]."""
    lin = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in rgb[:3]]
    return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]


def contrast_ratio(a: Sequence[float], b: Sequence[float]) -> float:
    """WCAG contrast ratio (1 to 21) of two sRGB colours with channels in [0, 1]."""
    la, lb = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


def text_colour(background: Sequence[float]) -> tuple[float, float, float]:
    """Black or white, whichever reads better on ``background`` (RGB in [0, 1])."""
    black, white = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    return white if contrast_ratio(white, background) > contrast_ratio(black, background) else black


def _strength_range(trace: TokenStrengths) -> tuple[float, float]:
    lo, hi = min(trace.strength), max(trace.strength)
    return lo, hi


def token_strengths_figure(trace: TokenStrengths, title: str = ""):
    """The per-token strength figure as a matplotlib ``Figure`` (see :func:`plot_token_strengths`).

    Layout, top to bottom: the title (with the prompt), the generated tokens as boxes
    coloured by strength (wrapped over rows, never overlapping; white text on dark
    boxes), the colour scale (only when the strength varies: a fixed intervener's
    constant strength is stated in words instead), then strength, ``p`` and ``u`` per
    token with the token names as tick labels.
    """
    _mpl()
    import matplotlib
    from matplotlib import cm, colors
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator, ScalarFormatter

    n = len(trace.tokens)
    labels = [_label(t) for t in trace.tokens]
    constant = trace.is_constant
    has_p = any(v is not None for v in trace.p)
    has_u = any(v is not None for v in trace.u)

    # Horizontal geometry (inches): fixed margins, the plot wide enough for one tick label
    # per token at the tick font size (rotated), within limits.
    left, right = 0.9, 0.85 if (has_p or has_u) else 0.35
    width = min(16.0, max(6.5, left + right + 0.2 * max(n, 1)))
    inner = width - left - right

    fig = Figure(figsize=(width, 5.0), dpi=_DPI)
    FigureCanvasAgg(fig)
    renderer = fig.canvas.get_renderer()

    def text_width(text: str, size: float) -> float:  # inches
        artist = fig.text(0, 0, text, fontsize=size)
        w = artist.get_window_extent(renderer).width / _DPI
        artist.remove()
        return w

    # Token rows: boxes placed left to right by measured width, wrapped to the panel.
    pad = 0.3 * _TOKEN_FONT / 72  # bbox padding (inches) on each side
    gap = 0.06
    rows: list[list[tuple[int, float]]] = [[]]
    x = 0.0
    for i, lab in enumerate(labels):
        w = text_width(lab, _TOKEN_FONT) + 2 * pad
        if rows[-1] and x + w > inner:
            rows.append([])
            x = 0.0
        rows[-1].append((i, x + pad))
        x += w + gap
    row_h = 0.3

    prompt = " ".join(trace.prompt.split())
    room = max(40, int(inner * 13))  # characters of the prompt that fit on one line
    if len(prompt) > room:  # keep the end: the question comes last
        prompt = "…" + prompt[-(room - 1) :]
    rule = "α (fixed intervener)" if trace.constant else "α(1+w)"
    heading = title or f"per-token edit strength {rule}\nprompt: {prompt}"
    title_h = 0.2 + 0.17 * (heading.count("\n") + 1)
    tokens_h = row_h * len(rows)
    scale_h = 0.62  # colour bar with its label, or the constant-strength note
    legend_h = 0.3
    plot_h = 1.9
    tick_h = max([text_width(lab, _TICK_FONT) for lab in labels] or [0.2]) + 0.45
    height = title_h + tokens_h + scale_h + legend_h + plot_h + tick_h
    fig.set_size_inches(width, height)

    def rect(top: float, h: float, x0: float = left, w: float = inner) -> list[float]:
        """[x, y, w, h] in figure fractions of a box ``top`` inches below the figure top."""
        return [x0 / width, (height - top - h) / height, w / width, h / height]

    fig.suptitle(heading, x=left / width, y=1 - 0.08 / height, ha="left", va="top", fontsize=9)

    # -- token boxes ---------------------------------------------------------------------
    lo, hi = _strength_range(trace) if n else (trace.alpha, trace.alpha)
    norm = colors.Normalize(vmin=lo, vmax=hi if hi > lo else lo + 1.0)
    cmap = matplotlib.colormaps[_CMAP]
    ax_t = fig.add_axes(rect(title_h, tokens_h))
    ax_t.set_xlim(0, inner)
    ax_t.set_ylim(tokens_h, 0)
    ax_t.axis("off")
    for r, row in enumerate(rows):
        for i, x0 in row:
            face = cmap(0.35) if constant else cmap(norm(trace.strength[i]))
            ax_t.text(x0, (r + 0.5) * row_h, labels[i], ha="left", va="center",
                      fontsize=_TOKEN_FONT, color=text_colour(face), gid=f"token-{i}",
                      bbox={"facecolor": face, "edgecolor": "none", "boxstyle": "round,pad=0.3"})  # fmt: skip

    # -- colour scale, or the constant strength in words ------------------------------------
    scale_top = title_h + tokens_h
    if constant:
        value = trace.strength[0] if trace.strength else trace.alpha
        fig.text(left / width, 1 - (scale_top + 0.3) / height,
                 f"constant strength {value:g} on every token (a fixed intervener: no per-token "
                 "signal, so no colour scale)", fontsize=8, color="0.3", va="center")  # fmt: skip
    else:
        cax = fig.add_axes(rect(scale_top + 0.14, 0.12, w=min(3.5, inner)))
        cbar = fig.colorbar(cm.ScalarMappable(norm=norm, cmap=cmap), cax=cax, orientation="horizontal")
        cbar.locator = MaxNLocator(4)
        cbar.formatter = ScalarFormatter(useOffset=False)
        cbar.ax.tick_params(labelsize=7)
        cax.set_title("box colour: edit strength α(1+w)", fontsize=7, loc="left", pad=2)

    # -- strength, p and u per token -----------------------------------------------------
    ax_s = fig.add_axes(rect(scale_top + scale_h + legend_h, plot_h))
    xs = list(range(n))
    label = "strength α (fixed)" if trace.constant else "strength α(1+w)"
    handles = ax_s.plot(xs, trace.strength, marker="o", color="tab:red", label=label)
    ax_s.yaxis.set_major_formatter(ScalarFormatter(useOffset=False))
    ax_s.set_ylabel("edit strength", fontsize=8)
    if constant and trace.strength:
        v = trace.strength[0]
        ax_s.set_ylim(*(sorted((0.0, 1.25 * v)) if v else (-1.0, 1.0)))
    ax_s.set_xlim(-0.6, max(n, 1) - 0.4)
    step = max(1, -(-n // max(1, int(inner / 0.16))))  # at most one label per 0.16 inch
    ax_s.set_xticks(xs[::step])
    ax_s.set_xticklabels(labels[::step], rotation=90, fontsize=_TICK_FONT)
    ax_s.set_xlabel("generated token", fontsize=8)
    ax_s.tick_params(axis="y", labelsize=7)
    if has_p or has_u:
        ax2 = ax_s.twinx()
        if has_p:
            handles.append(ax2.bar([i - 0.2 for i in xs], [v or 0.0 for v in trace.p], width=0.4,
                                   alpha=0.45, color="tab:blue", label="p (misalignment)"))  # fmt: skip
        if has_u:
            handles.append(ax2.bar([i + 0.2 for i in xs], [v or 0.0 for v in trace.u], width=0.4,
                                   alpha=0.45, color="tab:green", label="u (uncertainty)"))  # fmt: skip
        ax2.set_ylim(0, 1)
        ax2.set_ylabel(", ".join(name for name, on in (("p", has_p), ("u", has_u)) if on), fontsize=8)
        ax2.tick_params(axis="y", labelsize=7)
        ax_s.set_zorder(ax2.get_zorder() + 1)  # the line over the bars
        ax_s.patch.set_visible(False)
    ax_s.legend(handles=handles, loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=3,
                fontsize=8, frameon=False, borderaxespad=0.1)  # fmt: skip
    return fig


def plot_token_strengths(trace: TokenStrengths, path: str | Path, title: str = "") -> Path:
    """Save the per-token strength figure: tokens as boxes coloured by strength, with
    strength, ``p`` and ``u`` per token underneath (see :func:`token_strengths_figure`)."""
    fig = token_strengths_figure(trace, title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=_DPI, bbox_inches="tight", pad_inches=0.1)
    return path


# -- HTML view --------------------------------------------------------------------------
_HTML_RED = (220, 60, 30)


def _html_background(share: float) -> tuple[float, float, float]:
    """The opaque colour of the token background at ``share`` in [0, 1] (on white)."""
    a = 0.1 + 0.8 * share
    return tuple((1 - a) + a * c / 255 for c in _HTML_RED)  # type: ignore[return-value]


def _css(rgb: Sequence[float]) -> str:
    return "rgb({},{},{})".format(*(round(255 * c) for c in rgb))


def strengths_html(trace: TokenStrengths) -> str:
    """A self-contained HTML snippet: tokens shaded by strength (values on hover) and a
    legend saying what the shade means."""
    constant = trace.is_constant
    lo, hi = _strength_range(trace) if trace.strength else (trace.alpha, trace.alpha)
    spans = []
    for tok, s, p, u in zip(trace.tokens, trace.strength, trace.p, trace.u):
        share = 0.3 if constant else (s - lo) / (hi - lo)
        bg = _html_background(share)
        tip = f"strength={s:.3f}" + (f" p={p:.3f}" if p is not None else "") + (f" u={u:.3f}" if u is not None else "")
        spans.append(
            f'<span class="tok" title="{tip}" style="background: {_css(bg)}; color: {_css(text_colour(bg))}">'
            f"{html.escape(tok)}</span>"
        )
    signals = [name for name, vals in (("p", trace.p), ("u", trace.u)) if any(v is not None for v in vals)]
    hover = "strength" + "".join(f", {name}" for name in signals)
    if constant:
        value = trace.strength[0] if trace.strength else trace.alpha
        scale = (
            f"<span class='tok' style='background: {_css(_html_background(0.3))}'>token</span> "
            f"constant strength {value:g} on every token (a fixed intervener: no per-token signal)"
        )
    else:
        stops = ", ".join(_css(_html_background(t / 4)) for t in range(5))
        scale = (
            f"edit strength α(1+w): {lo:.3f} "
            f"<span style='display: inline-block; width: 12em; height: 0.9em; vertical-align: middle; "
            f"background: linear-gradient(to right, {stops})'></span> {hi:.3f}"
        )
    return (
        "<!doctype html><meta charset='utf-8'><title>per-token edit strength</title>"
        "<style>.tok { padding: 1px 2px; margin: 1px; border-radius: 3px } "
        ".legend { font-family: sans-serif; font-size: 0.85em; color: #444 }</style>"
        f"<p style='font-family: monospace; color: #555'>{html.escape(trace.prompt)}</p>"
        f"<p style='font-family: monospace; line-height: 2'>{''.join(spans)}</p>"
        f"<p class='legend'><b>Legend</b>: {scale}. Hover a token for its values ({hover}).</p>"
    )

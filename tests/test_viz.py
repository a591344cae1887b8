"""Per-token strength figure and HTML view: no colour scale (or offset notation) for a
constant strength, readable labels on dark boxes, no overlapping labels, an HTML legend."""

from __future__ import annotations

import itertools
import re

import pytest

from tae_framework.viz import (
    TokenStrengths,
    plot_token_strengths,
    strengths_html,
    token_strengths_figure,
    trace_generation,
)

TOKENS = [" The", " capital", " of", " Freedonia", " is", " Zanthor", ".", "\n", " a",
          " population_of_an_unusually_long_token", " 3", "0", "0", " people", "!"]  # fmt: skip


def _wcag(rgb) -> float:
    def lin(c):
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (lin(c) for c in rgb[:3])
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def _contrast(a, b) -> float:
    hi, lo = sorted((_wcag(a), _wcag(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def varying(n: int = len(TOKENS)) -> TokenStrengths:
    toks = (TOKENS * (n // len(TOKENS) + 1))[:n]
    strength = [15.0 * (1 + ((7 * i) % 11) / 10) for i in range(n)]
    p = [((3 * i) % 7) / 7 for i in range(n)]
    u = [((5 * i) % 9) / 9 for i in range(n)]
    return TokenStrengths("Q: What is the capital of Freedonia? A:", toks, strength, p, u, 15.0)


def fixed() -> TokenStrengths:
    n = len(TOKENS)
    return TokenStrengths("Q: What is the capital?", TOKENS, [15.0] * n, [None] * n, [None] * n, 15.0, True)


def _colorbars(fig):
    return [ax for ax in fig.axes if getattr(ax, "_colorbar", None) is not None]


def _offset_texts(fig) -> list[str]:
    fig.canvas.draw()
    return [axis.get_offset_text().get_text() for ax in fig.axes for axis in (ax.xaxis, ax.yaxis)]


def test_varying_strength_has_one_colour_scale_without_offset():
    trace = varying()
    trace.strength = [15.0 + 1e-3 * i for i in range(len(trace.tokens))]  # narrow range
    fig = token_strengths_figure(trace)
    assert len(_colorbars(fig)) == 1
    assert not any(_offset_texts(fig)), "tick labels must show values, not an offset"


@pytest.mark.parametrize(
    "trace",
    [
        fixed(),  # a fixed intervener (flagged by trace_generation)
        # unflagged, equal up to float32 noise of a mean over heads
        TokenStrengths("q", TOKENS[:4], [15.0, 15.0000005, 14.9999995, 15.0], [0.1] * 4, [0.2] * 4, 15.0),
    ],
    ids=["fixed", "float-noise"],
)
def test_constant_strength_has_no_colour_scale_and_says_so(trace):
    assert trace.is_constant
    fig = token_strengths_figure(trace)
    assert _colorbars(fig) == []
    assert not any(_offset_texts(fig))
    words = " ".join(t.get_text() for t in fig.texts)
    assert "constant strength 15" in words


def test_token_labels_contrast_with_their_boxes():
    fig = token_strengths_figure(varying())
    fig.canvas.draw()
    boxes = [t for ax in fig.axes for t in ax.texts if (t.get_gid() or "").startswith("token-")]
    assert len(boxes) == len(TOKENS)
    whites = 0
    for t in boxes:
        face = t.get_bbox_patch().get_facecolor()
        colour = t.get_color()
        from matplotlib.colors import to_rgb

        assert _contrast(to_rgb(colour), face) >= 4.5, (t.get_text(), colour, face)
        whites += to_rgb(colour) == (1.0, 1.0, 1.0)
    assert whites > 0, "the darkest boxes must carry light text"


def _overlaps(boxes) -> list[tuple[int, int]]:
    return [(i, j) for (i, a), (j, b) in itertools.combinations(enumerate(boxes), 2) if a.overlaps(b)]


@pytest.mark.parametrize("n", [15, 60, 150])
def test_no_overlapping_labels(n):
    fig = token_strengths_figure(varying(n))
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    tokens = [t.get_bbox_patch().get_window_extent(renderer)
              for ax in fig.axes for t in ax.texts if (t.get_gid() or "").startswith("token-")]  # fmt: skip
    assert len(tokens) == n
    assert _overlaps(tokens) == []
    page = fig.bbox
    assert all(page.x0 <= b.x0 and b.x1 <= page.x1 for b in tokens), "token boxes leave the figure"
    for ax in fig.axes:
        if not ax.xaxis.get_visible():  # the twin axis of p and u shares the x ticks
            continue
        lo, hi = sorted(ax.get_xlim())
        labels = [tick.label1.get_window_extent(renderer) for tick in ax.xaxis.get_major_ticks()
                  if lo <= tick.get_loc() <= hi and tick.label1.get_visible() and tick.label1.get_text()]  # fmt: skip
        assert _overlaps(labels) == [], ax
    # tick labels are the (shortened) token names
    main = max(fig.axes, key=lambda ax: len(ax.get_xticklabels()))
    names = [t.get_text() for t in main.get_xticklabels()]
    assert names[0] == "The" and any(name.endswith("…") for name in names)


def test_plot_writes_a_png(tmp_path):
    path = plot_token_strengths(varying(), tmp_path / "sub" / "fig.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _spans(page: str):
    return re.findall(r'background: rgb\((\d+),(\d+),(\d+)\); color: rgb\((\d+),(\d+),(\d+)\)', page)


def test_html_has_a_legend_and_readable_tokens():
    page = strengths_html(varying())
    assert "Legend" in page and "linear-gradient" in page
    legend = page[page.index("Legend") :]
    trace = varying()
    assert f"{min(trace.strength):.3f}" in legend and f"{max(trace.strength):.3f}" in legend
    spans = _spans(page)
    assert len(spans) == len(TOKENS)
    for values in spans:
        bg = [int(v) / 255 for v in values[:3]]
        fg = [int(v) / 255 for v in values[3:]]
        assert _contrast(fg, bg) >= 4.5
    assert "Hover a token" in page and "p, u" in page


def test_html_constant_strength_names_it_instead_of_a_scale():
    page = strengths_html(fixed())
    assert "constant strength 15" in page and "linear-gradient" not in page
    assert len({values[:3] for values in _spans(page)}) == 1  # one shade for every token


def test_trace_of_a_fixed_intervener_is_flagged_constant():
    from tae_framework import AlignmentPipeline
    from tae_framework.testing.data import toy_contrast
    from tae_framework.testing.models import tiny_model

    model, tok = tiny_model("llama")
    pipe = AlignmentPipeline.from_preset("iti", prober={"top_k": 2, "solver": "torch"}).fit(model, tok, toy_contrast(6))
    trace = trace_generation(pipe, model, tok, "Q: where is a? A:", max_new_tokens=4)
    assert trace.constant and trace.is_constant
    assert len(trace.tokens) == len(trace.strength) == 4

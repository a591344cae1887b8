"""MkDocs hooks that make the built site render without internet.

* Formulas: ``pymdownx.arithmatex`` (generic mode) leaves ``\\( ... \\)`` and
  ``\\[ ... \\]`` in ``<span/div class="arithmatex">``; :func:`on_page_content` converts
  each to MathML at build time with ``latex2mathml``. Browsers render MathML natively
  (Chromium 109+, Firefox, Safari), so no MathJax is loaded. A formula that
  ``latex2mathml`` cannot convert fails the build, naming the page and the formula.
* Diagrams: mermaid is shipped with the site (``docs/javascripts/vendor``, listed in
  ``extra_javascript``); mkdocs-material uses a ``mermaid`` it finds on the page instead
  of fetching one from a CDN.
* :func:`on_post_build` fails the build when any page loads a script, stylesheet, font
  or image from another host, so a later change cannot bring a CDN back unnoticed.

How to check the rendering in a real browser: ``make docs-check`` (see
``docs/_hooks/check_render.py`` and the contributing page).
"""

from __future__ import annotations

import html
import re
from pathlib import Path

ARITHMATEX = re.compile(r'<(?P<tag>span|div) class="arithmatex">(?P<body>.*?)</(?P=tag)>', re.S)
DELIMITERS = {"span": ("\\(", "\\)"), "div": ("\\[", "\\]")}

# Resources a browser fetches by itself while loading a page (links and anchors are not).
EXTERNAL = re.compile(
    r"""<(?:script|img|iframe|source|audio|video)\b[^>]*\bsrc=["'](?P<a>(?:https?:)?//[^"']+)"""
    r"""|<link\b(?=[^>]*\brel=["'](?:stylesheet|preload|modulepreload|icon|preconnect)["'])"""
    r"""[^>]*\bhref=["'](?P<b>(?:https?:)?//[^"']+)"""
    r"""|@import\s+(?:url\()?["']?(?P<c>(?:https?:)?//[^"')\s]+)"""
    r"""|url\(["']?(?P<d>(?:https?:)?//[^"')\s]+)""",
    re.I,
)


class MathConversionError(ValueError):
    """A formula that latex2mathml cannot convert."""


def latex_to_mathml(tex: str, display: bool) -> str:
    """MathML of one LaTeX formula (``display``: a block formula)."""
    from latex2mathml.converter import convert

    try:
        return convert(tex.strip(), display="block" if display else "inline")
    except Exception as exc:  # latex2mathml raises many types for unsupported input
        raise MathConversionError(f"{type(exc).__name__}: {exc}") from exc


def arithmatex_to_mathml(page_html: str, where: str = "page") -> str:
    """Replace every arithmatex formula of ``page_html`` by its MathML."""

    def convert(match: re.Match[str]) -> str:
        tag, body = match["tag"], html.unescape(match["body"]).strip()
        opening, closing = DELIMITERS[tag]
        if not (body.startswith(opening) and body.endswith(closing)):
            raise MathConversionError(
                f"{where}: unexpected arithmatex output {body[:80]!r}; keep "
                "`pymdownx.arithmatex: {generic: true}` in mkdocs.yml"
            )
        tex = body[len(opening) : -len(closing)]
        try:
            mathml = latex_to_mathml(tex, display=tag == "div")
        except MathConversionError as exc:
            raise MathConversionError(
                f"{where}: cannot convert the formula {tex.strip()!r} to MathML ({exc}); "
                "rewrite it with commands latex2mathml supports"
            ) from exc
        return f'<{tag} class="arithmatex">{mathml}</{tag}>'

    return ARITHMATEX.sub(convert, page_html)


def external_resources(page_html: str) -> list[str]:
    """URLs of the resources a browser would fetch from other hosts to show the page."""
    return [next(g for g in m.groups() if g) for m in EXTERNAL.finditer(page_html)]


def check_site(site_dir: str | Path) -> list[str]:
    """``"page: url"`` for every external resource of the built site's HTML and CSS."""
    site = Path(site_dir)
    found = []
    for path in sorted([*site.rglob("*.html"), *site.rglob("*.css")]):
        if "vendor" in path.parts:
            continue
        for url in external_resources(path.read_text(encoding="utf-8", errors="replace")):
            found.append(f"{path.relative_to(site)}: {url}")
    return found


# -- mkdocs event hooks -------------------------------------------------------------------
def on_page_content(html: str, page, config, files) -> str:
    from mkdocs.exceptions import PluginError

    try:
        return arithmatex_to_mathml(html, where=page.file.src_uri)
    except MathConversionError as exc:
        raise PluginError(str(exc)) from exc


def on_post_build(config) -> None:
    from mkdocs.exceptions import PluginError

    found = check_site(config["site_dir"])
    if found:
        raise PluginError(
            "the site loads resources from other hosts, so it does not render offline "
            "(ship them under docs/ or drop them):\n  " + "\n  ".join(found[:20])
        )

"""The docs site renders offline: formulas become MathML at build time, mermaid ships with
the site, and the build refuses pages that load anything from another host. The browser
check runs only where Chromium is installed (``make docs-check`` runs it on the real site)."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HOOKS = REPO / "docs" / "_hooks"


def _module(name: str):
    spec = importlib.util.spec_from_file_location(f"_docs_{name}", HOOKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


offline = _module("offline")


def test_formulas_become_mathml():
    page = (
        '<p>inline <span class="arithmatex">\\(x_t^{(l)} \\in \\mathbb{R}^{D}\\)</span> and</p>'
        '<div class="arithmatex">\\[\\sum_{i=1}^{n} a_i &lt; \\frac{1}{2}\\]</div>'
    )
    out = offline.arithmatex_to_mathml(page)
    assert "\\(" not in out and "\\[" not in out and "&lt; \\frac" not in out
    assert out.count("<math") == 2
    assert '<span class="arithmatex"><math' in out and 'display="inline"' in out
    assert '<div class="arithmatex"><math' in out and 'display="block"' in out
    assert "<mfrac>" in out and "<mo>&#x0003C;</mo>" in out  # the escaped "<" is an operator again
    assert "<mi>&#x0211D;</mi>" in out  # \mathbb{R} is the double-struck R


def test_unconvertible_formula_names_page_and_formula():
    page = '<span class="arithmatex">\\(\\frac{1}{\\)</span>'
    with pytest.raises(offline.MathConversionError, match=r"concepts/x.md: cannot convert the formula '\\\\frac\{1\}\{'"):
        offline.arithmatex_to_mathml(page, where="concepts/x.md")


@pytest.mark.parametrize(
    "snippet, external",
    [
        ('<script src="https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-mml-chtml.js"></script>', True),
        ('<script src="//unpkg.com/mermaid@11/dist/mermaid.min.js"></script>', True),
        ('<link rel="stylesheet" href="https://fonts.googleapis.com/css?family=Roboto">', True),
        ('<link href="https://fonts.gstatic.com" rel="preconnect">', True),
        ('<img alt="x" src="https://example.org/x.png">', True),
        ("@import url('https://fonts.googleapis.com/css2?family=Inter');", True),
        ('<script src="javascripts/vendor/mermaid-11.17.2.min.js"></script>', False),
        ('<a href="https://github.com/EleutherAI/lm-evaluation-harness">lm-eval</a>', False),
        ('<link rel="canonical" href="https://example.org/docs/">', False),
    ],
)
def test_external_resources_are_found(snippet, external):
    assert bool(offline.external_resources(snippet)) is external


def test_site_config_loads_nothing_from_a_cdn():
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("tag:yaml.org,2002:python/", lambda loader, suffix, node: None)
    config = yaml.load((REPO / "mkdocs.yml").read_text(encoding="utf-8"), Loader=Loader)
    assert "docs/_hooks/offline.py" in config["hooks"]
    assert config["theme"]["font"] is False  # no Google Fonts
    for entry in [*config.get("extra_javascript", []), *config.get("extra_css", [])]:
        assert "//" not in entry, entry
        assert (REPO / "docs" / entry).is_file(), entry
    assert any("mermaid" in entry for entry in config["extra_javascript"])


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium (apt-get install chromium)")
def test_a_small_site_renders_offline_in_chromium(tmp_path):
    """Builds a two-formula, one-diagram site with the real hook and vendored mermaid,
    then looks at it in headless Chromium with every other host unreachable."""
    docs = tmp_path / "docs"
    (docs / "javascripts").mkdir(parents=True)
    mermaid = next((REPO / "docs" / "javascripts" / "vendor").glob("mermaid-*.min.js"))
    shutil.copy(mermaid, docs / "javascripts" / mermaid.name)
    (docs / "index.md").write_text(textwrap.dedent("""\
        # Page

        Inline $x \\in \\mathbb{R}^d$ and a block:

        $$
        w = \\beta p + (1 - \\beta) u
        $$

        ```mermaid
        flowchart TB
            A[data] --> B[pipeline]
        ```
        """), encoding="utf-8")  # fmt: skip
    (tmp_path / "mkdocs.yml").write_text(textwrap.dedent(f"""\
        site_name: t
        theme: {{name: material, font: false}}
        hooks: [{HOOKS / "offline.py"}]
        markdown_extensions:
          - pymdownx.arithmatex: {{generic: true}}
          - pymdownx.superfences:
              custom_fences:
                - name: mermaid
                  class: mermaid
                  format: !!python/name:pymdownx.superfences.fence_code_format
        extra_javascript: [javascripts/{mermaid.name}]
        """), encoding="utf-8")  # fmt: skip
    subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-f", str(tmp_path / "mkdocs.yml"),
                    "-d", str(tmp_path / "site")], check=True, capture_output=True)  # fmt: skip
    check_render = _module("check_render")
    problems = check_render.check(
        tmp_path / "site", tmp_path / "shots", shutil.which("chromium"), pages=[("index.html", {"math": 2, "mermaid": 1})]
    )
    assert problems == []
    assert (tmp_path / "shots" / "index.png").stat().st_size > 10_000

"""Look at the built docs in a real headless browser, offline (``make docs-check``).

Usage::

    python docs/_hooks/check_render.py SITE_DIR [--out DIR] [--width 1280] [--browser PATH]

Serves ``SITE_DIR`` (a ``mkdocs build`` output) on localhost, opens pages in headless
Chromium with every other host unreachable, and for each page:

* saves a screenshot ``DIR/<page>.png`` at the given width (look at them);
* reads the DOM after the page's scripts ran and checks that formulas are MathML
  (no raw ``\\(`` / ``\\[`` left), that every mermaid block became an SVG diagram, and
  that no table is wider than the content column without a scroll bar of its own,
  and that no field name in a table's first column breaks over lines; code blocks
  that need a sideways scroll bar are listed as notes.

Exits 1 with one line per problem, 2 when no Chromium is found (install Debian's
``chromium`` package, or pass ``--browser``).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import html
import http.server
import re
import shutil
import socketserver
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

#: (page path in the site, what it must show)
PAGES = [
    ("index.html", {"mermaid": 1}),
    ("concepts/tae-method/index.html", {"math": 20}),
    ("reference/configuration/index.html", {}),
    ("how-to/lm-eval/index.html", {}),
]
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")


def find_browser(explicit: str | None = None) -> str | None:
    if explicit:
        return explicit if Path(explicit).exists() or shutil.which(explicit) else None
    return next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)


@contextlib.contextmanager
def serve(site: Path):
    handler = functools.partial(_QuietHandler, directory=str(site))
    with socketserver.TCPServer(("127.0.0.1", 0), handler) as httpd:
        thread = threading.Thread(target=httpd.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{httpd.server_address[1]}/"
        finally:
            httpd.shutdown()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass


def _chromium(browser: str, profile: str, width: int, height: int, *args: str) -> list[str]:
    return [
        browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
        "--no-first-run", f"--user-data-dir={profile}",
        # offline: every host except the local server fails to resolve
        "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
        f"--window-size={width},{height}", "--virtual-time-budget=15000", *args,
    ]  # fmt: skip


#: Runs in the page after load; writes its findings into the DOM for --dump-dom to read.
PROBE = """
<script>
window.addEventListener('load', () => setTimeout(() => {
  const out = {};
  const article = document.querySelector('article') || document.body;
  out.math = document.querySelectorAll('.arithmatex math').length;
  out.raw_tex = (article.innerText.match(/\\\\[\\(\\[]/g) || []).length;
  // mkdocs-material replaces each <pre class="mermaid"> by a <div class="mermaid"> whose
  // (closed) shadow root holds the SVG; an unrendered block stays a <pre> with its source.
  out.mermaid_blocks = window.__taeMermaidSources;
  out.mermaid_svg = [...document.querySelectorAll('div.mermaid')]
    .filter(d => d.getBoundingClientRect().height > 40).length;
  const col = article.getBoundingClientRect().width;
  out.overflow = [...article.querySelectorAll('table')]
    .filter(e => e.getBoundingClientRect().width > col + 1 && !e.closest('.md-typeset__scrollwrap'))
    .map(e => 'table:' + (e.textContent || '').trim().slice(0, 40));
  out.scrolling_code = [...article.querySelectorAll('pre > code')]
    .filter(c => c.scrollWidth > c.clientWidth + 1)
    .map(c => (c.textContent || '').trim().split('\\n')[0].slice(0, 50));
  out.broken_words = [...article.querySelectorAll('table td:first-child code')]
    .filter(c => c.getClientRects().length > 1).map(c => c.textContent).slice(0, 10);
  const pre = document.createElement('pre');
  pre.id = 'tae-probe';
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
}, 3000));
</script>
"""


def check(
    site: Path,
    out_dir: Path,
    browser: str,
    width: int = 1280,
    height: int = 2000,
    pages: list[tuple[str, dict[str, int]]] | None = None,
) -> list[str]:
    """Screenshot and probe ``pages`` (default :data:`PAGES`) of the built ``site``;
    returns one line per problem."""
    import json

    pages = PAGES if pages is None else pages

    problems: list[str] = []
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        probe_site = Path(tmp) / "site"
        shutil.copytree(site, probe_site)
        for page, _ in pages:
            path = probe_site / page
            if not path.exists():
                problems.append(f"{page}: not in the site (build the docs first)")
                continue
            text = path.read_text(encoding="utf-8")
            sources = len(re.findall(r'<pre class="mermaid"', text))  # diagrams before rendering
            probe = f"<script>window.__taeMermaidSources = {sources};</script>" + PROBE
            path.with_name("probe.html").write_text(text.replace("</body>", probe + "</body>"), encoding="utf-8")
        with serve(probe_site) as url:
            for page, wants in pages:
                if not (probe_site / page).exists():
                    continue
                name = page.replace("/index.html", "").replace(".html", "").replace("/", "_") or "index"
                shot = out_dir / f"{name}.png"
                profile = str(Path(tmp) / f"profile-{name}")
                subprocess.run(
                    _chromium(browser, profile, width, height, f"--screenshot={shot}", url + page),
                    capture_output=True, timeout=180, check=False,
                )  # fmt: skip
                if not shot.exists():
                    problems.append(f"{page}: no screenshot was written")
                probe_url = url + page.replace("index.html", "probe.html")
                dom = subprocess.run(
                    _chromium(browser, profile, width, height, "--dump-dom", probe_url),
                    capture_output=True, text=True, timeout=180, check=False,
                ).stdout  # fmt: skip
                match = re.search(r'<pre id="tae-probe">(.*?)</pre>', dom, re.S)
                if not match:
                    problems.append(f"{page}: the page's scripts did not finish (no probe result)")
                    continue
                found = json.loads(html.unescape(match.group(1)))
                print(f"{page}: {found}  -> {shot}")
                if found["math"] < wants.get("math", 0):
                    problems.append(f"{page}: {found['math']} MathML formulas, expected {wants['math']}+")
                if found["raw_tex"]:
                    problems.append(f"{page}: {found['raw_tex']} formulas shown as raw LaTeX")
                if found["mermaid_svg"] < found["mermaid_blocks"] or found["mermaid_svg"] < wants.get("mermaid", 0):
                    problems.append(
                        f"{page}: {found['mermaid_svg']} of {found['mermaid_blocks']} mermaid blocks rendered"
                    )
                for item in found["overflow"]:
                    problems.append(f"{page}: wider than the content column: {item}")
                for line in found["scrolling_code"]:  # allowed, but worth a look
                    print(f"  note: a code block scrolls sideways at {width} px: {line}")
                for word in found["broken_words"]:
                    problems.append(f"{page}: field name broken over lines: {word}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("site", type=Path, help="built site (mkdocs build --site-dir SITE)")
    parser.add_argument("--out", type=Path, default=Path("site-screenshots"), help="screenshot folder")
    parser.add_argument("--width", type=int, default=1280, help="window width in CSS pixels")
    parser.add_argument("--browser", default=None, help="Chromium executable (default: found on PATH)")
    args = parser.parse_args(argv)
    browser = find_browser(args.browser)
    if browser is None:
        print("no Chromium found: apt-get install chromium, or pass --browser PATH", file=sys.stderr)
        return 2
    problems = check(args.site, args.out, browser, args.width)
    for line in problems:
        print("problem:", line, file=sys.stderr)
    print("ok" if not problems else f"{len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())

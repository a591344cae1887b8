"""Every code block of README.md and docs/**/*.md is executed or checked, so the docs
cannot rot. The rules (also on the docs page ``contributing.md``):

* A page's code runs in a fresh scratch directory (the working directory), laid out like
  the repository's surroundings: ``../shared`` points at the shared data beside the
  repository when it exists. A page whose code reads ``../shared`` is skipped, with the
  reason shown, when that folder is absent (as the TruthfulQA tests are).
* ```` ```python ```` blocks run in order, page by page, in one namespace per page, so a
  later block reuses the variables of earlier ones. The code shown is the code run:
  there is no hidden setup.
* A block with a ``title="some/path.ext"`` attribute is a file of the example (a plugin's
  module, its ``pyproject.toml``, a config file): it is written to that path in the
  scratch directory instead of being executed; Python files are still compiled.
* ```` ```toml ```` blocks are parsed with ``tomllib``; a block with a ``[project]`` table
  must declare the entry-point group ``tae_framework.plugins``. ```` ```json ````
  blocks are parsed with ``json``.
* ```` ```bash ```` / ```` ```console ```` blocks are checked line by line (``$ `` prompts
  in console blocks; other console lines are output):

  - ``tae ...`` commands are run for real, in-process through ``tae_framework.cli.main``,
    in the page's scratch directory (offline: ``HF_HUB_OFFLINE=1``), and must exit with
    0 and print their result; ``tae_framework/...`` paths (the shipped organism) resolve
    as they do in a clone of the repository. With ``-s`` the time they took is printed
    at the end of the module; keep the whole file within about three minutes of a
    2-core machine;
  - except commands that cannot run on a CPU without downloads, which are only parsed
    (through ``cli.main`` up to the command module, whose own parser,
    ``tae_framework.commands.parser_for``, must accept the arguments): a command whose
    ``--device`` is ``cuda``/``cuda:N``/``auto`` (it needs a GPU), ``tae organism train``
    (minutes to hours of training), and every command of a
    block preceded by the comment ``<!-- docs-test: parse-only (REASON) -->`` (a reason
    is required, e.g. ``needs GPU + hub`` or ``needs the BBQ download``);
  - ``make TARGET`` must name a Makefile target;
  - ``pip install ...``: local paths must exist (in the repository or written by the
    page), requirement names must be this project, a first-party plugin or an installed
    distribution. ``pip install -e DIR`` of a directory written by the page is emulated
    without touching the environment: ``DIR/src`` goes on the path and a ``.dist-info``
    with the package's entry points is written to the scratch directory, which is what an
    editable install does;
  - ``pytest PATH ...`` runs pytest on paths written by the page (in a subprocess);
    paths in the repository must exist;
  - ``mkdocs build|serve``, ``python -m venv DIR``, ``export VAR=value`` (applied to the
    page's later commands, where ``$VAR`` expands as in bash) and ``VAR=value`` prefixes
    are accepted;
  - any other command fails the test: nothing is skipped silently.
* ```` ```text ````, ```` ```mermaid ```` (diagrams, sample output) and blocks without a
  language are not code. Any other language fails the test.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import tomllib

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"
PAGES = [REPO / "README.md", *sorted(p for p in (REPO / "docs").rglob("*.md") if "_hooks" not in p.parts)]

PYTHON = {"python", "py"}
SHELL = {"bash", "sh", "shell", "console"}
NOT_CODE = {"", "text", "mermaid"}
KNOWN = PYTHON | SHELL | NOT_CODE | {"toml", "json"}

FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>[^`]*)$")


@dataclass
class Block:
    page: Path
    line: int  # 1-based line of the first code line
    lang: str
    title: str | None
    code: str
    parse_only: str | None = None  # the reason given in a `<!-- docs-test: parse-only (...) -->` comment

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"


def extract(path: Path) -> list[Block]:
    """Fenced code blocks of a Markdown file (also inside indented admonitions/tabs)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, info = len(m["indent"]), m["fence"], m["info"].strip()
        lang_match = re.match(r"\{?\s*\.?([\w+-]*)", info)
        lang = (lang_match.group(1) if lang_match else "").lower()
        title_match = re.search(r'title="([^"]*)"', info)
        body: list[str] = []
        j = i + 1
        close = re.compile(rf"^[ \t]{{0,{indent + 3}}}{re.escape(fence[0])}{{{len(fence)},}}\s*$")
        while j < len(lines) and not close.match(lines[j]):
            raw = lines[j]
            strip = min(indent, len(raw) - len(raw.lstrip(" ")))
            body.append(raw[strip:])
            j += 1
        if j == len(lines):
            raise AssertionError(f"{path.relative_to(REPO)}:{i + 1}: code fence never closed")
        blocks.append(
            Block(path, i + 2, lang, title_match.group(1) if title_match else None, "\n".join(body) + "\n",
                  _marker(lines, i, path))
        )  # fmt: skip
        i = j + 1
    return blocks


MARKER = re.compile(r"^\s*<!--\s*docs-test:\s*(?P<what>[\w-]+)\s*(?:\((?P<why>[^)]*)\))?\s*-->\s*$")


def _marker(lines: list[str], fence: int, path: Path) -> str | None:
    """The reason of a ``<!-- docs-test: parse-only (REASON) -->`` comment on the last
    non-blank line before the fence at ``lines[fence]``, else None."""
    k = fence - 1
    while k >= 0 and not lines[k].strip():
        k -= 1
    if k < 0 or "docs-test" not in lines[k]:
        return None
    m = MARKER.match(lines[k])
    where = f"{path.relative_to(REPO)}:{k + 1}"
    if not m or m["what"] != "parse-only":
        raise AssertionError(f"{where}: write the marker as <!-- docs-test: parse-only (REASON) -->")
    if not (m["why"] or "").strip():
        raise AssertionError(f"{where}: a parse-only marker needs a reason, e.g. (needs GPU + hub)")
    return m["why"].strip()


ALL_BLOCKS = {page: extract(page) for page in PAGES}
CODE_PAGES = [p for p, blocks in ALL_BLOCKS.items() if any(b.lang not in NOT_CODE for b in blocks)]


def _page_id(page: Path) -> str:
    return str(page.relative_to(REPO))


# -------------------------------------------------------------------------------------
# tae command lines
# -------------------------------------------------------------------------------------
#: Seconds each ``tae`` command run for real took (``page:line command`` -> seconds).
TAE_SECONDS: dict[str, float] = {}
GPU_DEVICE = re.compile(r"^(cuda(:\d+)?|auto)$")


#: Commands never run by this test, whatever the page says: training the organism takes
#: minutes to hours (its own slow test covers it).
NEVER_RUN = (["organism", "train"],)


def needs_gpu(argv: list[str]) -> bool:
    if any(argv[: len(words)] == words for words in NEVER_RUN):
        return True
    for k, a in enumerate(argv):
        value = argv[k + 1] if a == "--device" and k + 1 < len(argv) else a.partition("=")[2] if a.startswith("--device=") else None
        if value is not None and GPU_DEVICE.match(value):
            return True
    return False


def run_tae(argv: list[str], where: str, capsys) -> None:
    """Run ``tae argv`` for real through ``cli.main`` in the page's scratch directory."""
    import time

    from tae_framework import cli

    shown = "tae " + shlex.join(argv)
    capsys.readouterr()
    start = time.perf_counter()
    try:
        rc = cli.main(argv)
    except SystemExit as exc:  # argparse: a bad option or value
        rc = exc.code
    TAE_SECONDS[f"{where} {shown[:90]}"] = time.perf_counter() - start
    out = capsys.readouterr()
    assert rc == 0, (
        f"{where}: `{shown}` exited with {rc}:\n{out.err[-3000:]}\n(if it cannot run on a CPU without downloads, "
        "put <!-- docs-test: parse-only (REASON) --> before its block)"
    )
    assert out.out.strip(), f"{where}: `{shown}` printed nothing"


def check_tae(argv: list[str], where: str, capsys, parse_only: str | None = None) -> None:
    """Run ``tae argv`` for real (:func:`run_tae`), or, for a command that needs a GPU
    or is marked parse-only, run it through the real ``cli.main`` up to the command
    module it dispatches to and check that the command's own parser
    (:func:`tae_framework.commands.parser_for`) accepts the arguments."""
    from types import SimpleNamespace

    from tae_framework import cli, commands

    if parse_only is None and not needs_gpu(argv):
        run_tae(argv, where, capsys)
        return
    shown = "tae " + shlex.join(argv)
    calls: list[tuple[str, list[str]]] = []
    real_load = commands.load

    def recording_load(command):
        module = real_load(command)

        def record(rest):
            calls.append((module.__name__, list(rest)))
            return 0

        return SimpleNamespace(HELP=module.HELP, main=record, __name__=module.__name__)

    err = io.StringIO()
    commands.load = recording_load
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                rc = cli.main(argv)
            except SystemExit:
                raise AssertionError(f"{where}: `{shown}` is rejected by the tae CLI:\n{err.getvalue()}") from None
    finally:
        commands.load = real_load
    assert rc == 0 and calls, f"{where}: `{shown}` did not reach a command"
    module_name, rest = calls[0]
    parser = commands.parser_for(module_name)
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            parser.parse_args(rest)
        except SystemExit:
            raise AssertionError(
                f"{where}: `{shown}`: the parser of {module_name} rejects the arguments:\n{err.getvalue()}"
            ) from None


# -------------------------------------------------------------------------------------
# other shell commands
# -------------------------------------------------------------------------------------
def make_targets() -> set[str]:
    text = (REPO / "Makefile").read_text()
    return {m.group(1) for m in re.finditer(r"^([A-Za-z][\w.-]*)\s*:(?!=)", text, re.MULTILINE)}


def _known_distribution(name: str) -> bool:
    from importlib import metadata

    base = re.split(r"[\[<>=!~ ]", name, maxsplit=1)[0]
    if base in {"tae-framework", "tae-iti", "tae-caa"}:
        return True
    try:
        metadata.distribution(base)
    except metadata.PackageNotFoundError:
        return False
    return True


class Shell:
    """Checks the shell commands of one page."""

    def __init__(self, scratch: Path, monkeypatch, capsys):
        self.scratch, self.monkeypatch, self.capsys = scratch, monkeypatch, capsys
        self.env: dict[str, str] = {}
        self.installed: list[Path] = []

    def exists(self, path: str) -> Path | None:
        for root in (self.scratch, REPO):
            p = (root / path).resolve()
            if p.exists():
                return p
        return None

    def commands(self, block: Block) -> list[tuple[int, str]]:
        out: list[tuple[int, str]] = []
        pending, start = "", 0
        for k, raw in enumerate(block.code.splitlines()):
            line = raw.rstrip()
            if block.lang == "console":
                if not pending:
                    if not line.startswith("$ "):
                        continue  # output
                    line = line[2:]
            if not pending and (not line.strip() or line.lstrip().startswith("#")):
                continue
            if not pending:
                start = block.line + k
            if line.endswith("\\"):
                pending += line[:-1] + " "
                continue
            out.append((start, pending + line))
            pending = ""
        assert not pending, f"{block.where}: a command ends with a line continuation"
        return out

    def run_block(self, block: Block, errors: list[str]) -> None:
        """Check every command; problems are collected, so one test run reports all of a
        page's (a command that depends on a failed one fails too, and says so)."""
        cmds = self.commands(block)
        assert cmds, f"{block.where}: a {block.lang} block without commands: use ```text for output"
        for line, cmd in cmds:
            for part in re.split(r"\s*&&\s*", cmd):
                try:
                    self.run(part, f"{_page_id(block.page)}:{line}", block.parse_only)
                except AssertionError as exc:
                    errors.append(str(exc))

    def run(self, cmd: str, where: str, parse_only: str | None = None) -> None:
        # $VAR / ${VAR} of an earlier `export` expand (and split into words) as in bash
        cmd = re.sub(r"\$(?:\{(\w+)\}|(\w+))", lambda m: self.env.get(m[1] or m[2], m[0]), cmd)
        argv = shlex.split(cmd, comments=True)
        env = dict(self.env)
        while argv and re.match(r"^[A-Z_][A-Z0-9_]*=", argv[0]):
            key, value = argv.pop(0).split("=", 1)
            env[key] = value
        assert argv, f"{where}: empty command"
        prog = argv[0]
        if prog.startswith(".venv/bin/"):
            prog = prog.removeprefix(".venv/bin/")
        args = argv[1:]
        if prog in ("python", "python3") and args[:1] == ["-m"]:
            prog, args = args[1], args[2:]
        with self.monkeypatch.context() as mp:
            for key, value in env.items():
                mp.setenv(key, value)
            if prog == "tae":
                check_tae(args, where, self.capsys, parse_only)
            elif prog == "make":
                targets = [a for a in args if not a.startswith("-") and "=" not in a]
                assert targets, f"{where}: `make` without a target"
                missing = set(targets) - make_targets()
                assert not missing, f"{where}: Makefile has no target {sorted(missing)}"
            elif prog == "pip":
                self.pip(args, where)
            elif prog == "pytest":
                self.pytest(args, where)
            elif prog == "mkdocs":
                assert args[:1] in (["build"], ["serve"]), f"{where}: unknown mkdocs command {args}"
                assert (REPO / "mkdocs.yml").is_file()
            elif prog == "venv":
                assert args, f"{where}: `python -m venv` needs a directory"
            elif prog == "export":
                for item in args:
                    key, _, value = item.partition("=")
                    assert key and _, f"{where}: `export {item}` is not VAR=value"
                    self.env[key] = value
            else:
                raise AssertionError(
                    f"{where}: no rule checks the command {prog!r}; add one to tests/docs/test_docs_code.py "
                    "or show it as ```text if it is not meant to be run"
                )

    def pip(self, args: list[str], where: str) -> None:
        assert args[:1] == ["install"], f"{where}: only `pip install` is documented, got {args}"
        items = args[1:]
        k = 0
        while k < len(items):
            item = items[k]
            k += 1
            if item in ("-q", "--quiet", "-U", "--upgrade", "--no-deps"):
                continue
            if item in ("--index-url", "--extra-index-url"):
                k += 1
                continue
            if item in ("-e", "--editable"):
                target = items[k]
                k += 1
                self.pip_path(target, where, editable=True)
                continue
            assert not item.startswith("-"), f"{where}: unexpected pip option {item}"
            if item.startswith((".", "/")) or "/" in item.split("[")[0]:
                self.pip_path(item, where, editable=False)
            else:
                assert _known_distribution(item), f"{where}: {item} is neither this project nor an installed distribution"

    def pip_path(self, target: str, where: str, editable: bool) -> None:
        path = target.split("[")[0].strip("\"'")
        found = next(
            (root / path for root in (self.scratch, REPO) if (root / path / "pyproject.toml").is_file()), None
        )
        assert found is not None, (
            f"{where}: `pip install {target}`: {path} is not a directory with a pyproject.toml"
        )
        meta = tomllib.loads((found / "pyproject.toml").read_text())
        if found.is_relative_to(self.scratch):
            self.emulate_install(found, meta, where)

    def emulate_install(self, root: Path, meta: dict, where: str) -> None:
        project = meta["project"]
        dist = project["name"].replace("-", "_")
        site = self.scratch / ".docs-site"
        info = site / f"{dist}-{project.get('version', '0')}.dist-info"
        info.mkdir(parents=True, exist_ok=True)
        (info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project.get('version', '0')}\n"
        )
        lines = []
        for group, entries in project.get("entry-points", {}).items():
            lines.append(f"[{group}]")
            lines += [f"{k} = {v}" for k, v in entries.items()]
        (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
        where_src = meta.get("tool", {}).get("setuptools", {}).get("packages", {}).get("find", {}).get("where", ["."])
        for folder in [site, *(root / w for w in where_src)]:
            self.monkeypatch.syspath_prepend(str(folder))
            self.installed.append(folder)
        importlib.invalidate_caches()
        from tae_framework import plugins

        plugins._DEFAULT.clear()  # the page's later `tae` commands see the installed plugin

    def pytest(self, args: list[str], where: str) -> None:
        paths = [a for a in args if not a.startswith("-")]
        assert paths, f"{where}: pytest without a path"
        local = [p for p in paths if (self.scratch / p).exists()]
        if not local:
            for p in paths:
                assert (REPO / p).exists(), f"{where}: pytest path {p} does not exist in the repository"
            return
        env = dict(os.environ)
        env.update(self.env)
        env["PYTHONPATH"] = os.pathsep.join([*(str(p) for p in self.installed), env.get("PYTHONPATH", "")])
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", *args, "-p", "no:cacheprovider", "-q"],
            cwd=self.scratch, env=env, capture_output=True, text=True, timeout=600,
        )
        assert proc.returncode == 0, f"{where}: `pytest {shlex.join(args)}` failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-2000:]}"


# -------------------------------------------------------------------------------------
# the tests
# -------------------------------------------------------------------------------------
def test_every_block_has_a_known_language():
    unknown = [f"{b.where} ({b.lang})" for blocks in ALL_BLOCKS.values() for b in blocks if b.lang not in KNOWN]
    assert not unknown, f"code blocks in a language no rule handles: {unknown}"


def test_the_extractor_finds_the_pages_code():
    # Guards the extractor itself: these pages must be found with runnable Python.
    for page in ("README.md", "docs/index.md", "docs/tutorials/steer-with-tae.md", "docs/plugins/writing.md"):
        blocks = ALL_BLOCKS[REPO / page]
        assert any(b.lang in PYTHON for b in blocks), f"{page}: no python block found"


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    if SHARED.is_dir():
        (tmp_path / "shared").symlink_to(SHARED, target_is_directory=True)
    # `tae ... --model tae_framework/organism/assets` works from a clone's root: so here
    (work / "tae_framework").symlink_to(REPO / "tae_framework", target_is_directory=True)
    monkeypatch.chdir(work)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a command reaching for the hub fails at once
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("TAE_PROGRESS", "0")
    modules_before = set(sys.modules)
    yield work
    from tae_framework import plugins

    plugins._DEFAULT.clear()  # a page may have installed plugins: rebuild the default registry
    for name in set(sys.modules) - modules_before:  # forget modules written by the page
        file = getattr(sys.modules[name], "__file__", None) or ""
        if file.startswith(str(tmp_path)):
            del sys.modules[name]


@pytest.mark.parametrize("page", CODE_PAGES, ids=_page_id)
def test_page_code(page: Path, scratch: Path, monkeypatch, capsys):
    if not SHARED.is_dir() and any("../shared" in b.code for b in ALL_BLOCKS[page]):
        pytest.skip(f"{_page_id(page)} reads ../shared (TruthfulQA), which is not beside the repository at {SHARED}")
    namespace: dict = {"__name__": "__docs__"}
    shell = Shell(scratch, monkeypatch, capsys)
    errors: list[str] = []
    for block in ALL_BLOCKS[page]:
        if block.lang in NOT_CODE:
            continue
        if block.title and re.search(r"[\w-]+\.\w+$", block.title):
            target = scratch / block.title
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(block.code, encoding="utf-8")
            if block.lang in PYTHON:
                compile(block.code, block.where, "exec")
            elif block.lang == "toml":
                check_toml(block)
            elif block.lang == "json":
                json.loads(block.code)
            continue
        if block.lang in PYTHON:
            code = "\n" * (block.line - 1) + block.code  # tracebacks point at the page's lines
            exec(compile(code, str(block.page), "exec"), namespace)
        elif block.lang in SHELL:
            shell.run_block(block, errors)
        elif block.lang == "toml":
            check_toml(block)
        elif block.lang == "json":
            json.loads(block.code)
    assert not errors, "commands that would not work as documented:\n" + "\n".join(errors)


def check_toml(block: Block) -> None:
    data = tomllib.loads(block.code)
    if "project" in data:
        groups = data["project"].get("entry-points", {})
        assert "tae_framework.plugins" in groups, (
            f"{block.where}: a [project] table without [project.entry-points.\"tae_framework.plugins\"]"
        )


def test_readme_links_point_to_existing_files():
    # mkdocs --strict checks the links between pages; the README is not part of the site.
    text = (REPO / "README.md").read_text(encoding="utf-8")
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [t for t in targets if not re.match(r"^[a-z]+://", t)]
    assert local, "the README links to no docs page"
    missing = [t for t in local if not (REPO / t).exists()]
    assert not missing, f"README.md links to missing files: {missing}"


@pytest.fixture(scope="module", autouse=True)
def _report_tae_seconds(request):
    yield
    reporter = request.config.pluginmanager.getplugin("terminalreporter")
    if TAE_SECONDS and reporter is not None:
        total = sum(TAE_SECONDS.values())
        slowest = sorted(TAE_SECONDS.items(), key=lambda kv: -kv[1])[:5]
        reporter.write_line(f"\ndocs: {len(TAE_SECONDS)} tae commands run for real in {total:.1f} s; slowest:")
        for what, sec in slowest:
            reporter.write_line(f"  {sec:6.1f} s  {what}")


def _documented_commands() -> list[tuple[str, list[str]]]:
    """Every documented ``tae`` command line (page:line, argv without ``tae``)."""
    out = []
    for blocks in ALL_BLOCKS.values():
        for block in blocks:
            if block.lang not in SHELL:
                continue
            for line, cmd in Shell(REPO, None, None).commands(block):
                for part in re.split(r"\s*&&\s*", cmd):
                    argv = shlex.split(part, comments=True)
                    while argv and re.match(r"^[A-Z_][A-Z0-9_]*=", argv[0]):
                        argv.pop(0)
                    if argv[:1] == ["tae"]:
                        out.append((f"{_page_id(block.page)}:{line}", argv[1:]))
    return out


def _option(argv: list[str], *names: str, default: str | None = None) -> str | None:
    for k, a in enumerate(argv):
        if a in names and k + 1 < len(argv):
            return argv[k + 1]
    return default


def test_no_two_pages_write_the_same_run_or_pipeline_folder():
    # A reader who follows two pages in one folder must not hit "refused: the run exists
    # with other settings": a results folder or saved pipeline belongs to one command.
    owners: dict[str, dict[str, str]] = {}
    for where, argv in _documented_commands():
        if argv[:1] in (["eval"], ["sweep"]):
            method = _option(argv, "--preset", "--pipeline", "--config", default="tae")
            task = _option(argv, "--task", default="truthfulqa")
            run = _option(argv, "--run", "--run-name", default=f"{Path(method).name}-{task}")
            folder = f"{_option(argv, '--out', default='results')}/{run}"
        elif argv[:1] == ["fit"]:
            folder = _option(argv, "--out")
        else:
            continue
        same = " ".join(a for a in argv if a != "--overwrite")
        owners.setdefault(folder, {}).setdefault(same, where)
    clashes = {f: sorted(cmds.values()) for f, cmds in owners.items() if len(cmds) > 1}
    assert not clashes, f"documented commands that write the same folder with different settings: {clashes}"

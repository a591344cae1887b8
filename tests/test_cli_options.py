"""Options of the ``tae`` command line: every help shows the defaults, hostile values
are refused at once with one line and exit code 2, ``-v``/``-q`` set the library's
verbosity for one command, and a closed output pipe ends the command quietly."""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys

import pytest

from tae_framework import cli
from tae_framework.commands import COMMANDS, parser_for
from tae_framework.commands._common import count


def _help(words: tuple[str, ...]) -> str:
    return parser_for(words).format_help()


@pytest.mark.parametrize("words", list(COMMANDS), ids=" ".join)
def test_every_command_help_shows_the_defaults(words):
    parser = parser_for(words)
    text = " ".join(parser.format_help().split())  # argparse wraps lines
    checked = 0
    for action in parser._actions:
        d = action.default
        if not action.option_strings or d in (None, False, [], argparse.SUPPRESS) or isinstance(action, argparse._CountAction):
            continue
        checked += 1
        explicit = "default" in (action.help or "").replace("%(default)s", "")
        assert explicit or f"(default: {d})" in text, (
            f"tae {' '.join(words)} --help does not show the default of {action.option_strings[0]} ({d!r})"
        )
    if words in (("eval",), ("sweep",), ("fit",), ("generate",), ("demo",)):
        assert checked >= 2


def test_top_level_help_lists_the_commands_and_verbosity(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "-v, --verbose" in out and "-q, --quiet" in out and "defaults" in out
    for words in COMMANDS:
        assert words[0] in out


def test_eval_help_shows_concrete_defaults():
    text = " ".join(_help(("eval",)).split())
    for shown in ("(default: auto)", "(default: cpu)", "(default: 8)", "(default: 42)", "(default: results)", "(default: truthfulqa)"):
        assert shown in text


HOSTILE = [
    (["demo", "--methods", "tae,foo"], "'foo'", "tae, iti, iti-random, caa"),
    (["demo", "--methods", ","], "no method given", "choose from"),
    (["demo", "--limit", "0"], "--limit", "must be positive, got 0"),
    (["demo", "--limit", "-5"], "--limit", "must be positive, got -5"),
    (["demo", "--limit", "ten"], "--limit", "expected a whole number"),
    (["demo", "--batch-size", "0"], "--batch-size", "must be positive"),
    (["eval", "--model", "m", "--batch-size", "-1"], "--batch-size", "must be positive"),
    (["eval", "--model", "m", "--max-new-tokens", "0"], "--max-new-tokens", "must be positive"),
    (["eval", "--model", "m", "--side-effects-n", "0"], "--side-effects-n", "must be positive"),
    (["sweep", "--model", "m", "--side-effects-max-tokens", "-2"], "--side-effects-max-tokens", "must be positive"),
    (["fit", "--model", "m", "--data", "d.jsonl", "--out", "o", "--fold", "-1"], "--fold", "0 or more"),
    (["generate", "--model", "m", "--pipeline", "p", "--prompt", "x", "--max-new-tokens", "0"], "--max-new-tokens", "must be positive"),
    (["organism", "train", "--steps", "0"], "--steps", "must be positive"),
    (["organism", "train", "--threads", "-1"], "--threads", "must be positive"),
    (["eval", "--model", "m", "--bogus"], "unrecognized arguments", "--bogus"),
    (["eval", "--modle", "m"], "required", "--model"),
    (["nonsense"], "invalid choice", "nonsense"),
]


@pytest.mark.parametrize(("argv", "names", "says"), HOSTILE, ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_hostile_options_exit_2_with_one_line(argv, names, says, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may be written
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    out = capsys.readouterr()
    lines = out.err.strip().splitlines()
    assert len(lines) == 1, out.err
    assert lines[0].startswith("tae") and "error:" in lines[0] and names in lines[0] and says in lines[0], lines[0]
    assert out.out == "" and list(tmp_path.iterdir()) == []


def test_demo_refuses_unknown_methods_before_loading_anything(monkeypatch):
    from tae_framework import demo, organism
    from tae_framework.errors import ConfigError

    def no_load(*a, **k):  # the organism must not even be loaded
        raise AssertionError("the organism was loaded before the methods were checked")

    monkeypatch.setattr(organism, "load", no_load)
    with pytest.raises(ConfigError, match=r"'foo'.*choose from tae, iti, iti-random, caa"):
        demo.run_demo(["tae", "foo"])
    with pytest.raises(ConfigError, match="limit must be a positive"):
        demo.run_demo(["tae"], limit=0)


def test_count_type():
    assert count(1)("3") == 3 and count(0)("0") == 0
    for bad in ("0", "-1", "x", "1.5"):
        with pytest.raises(argparse.ArgumentTypeError):
            count(1)(bad)


def test_verbosity_flags_apply_to_one_command_only(capsys, monkeypatch):
    from tae_framework.commands import plugins

    logger = logging.getLogger("tae_framework")
    before = (logger.level, list(logger.handlers))
    levels = []
    real = plugins.main

    def spy(argv):
        status = real(argv)  # parses -v/-q and sets the verbosity
        levels.append(logger.level)
        return status

    monkeypatch.setattr(plugins, "main", spy)
    assert cli.main(["-q", "plugins"]) == 0  # before the command
    assert cli.main(["plugins", "-v"]) == 0  # after it
    assert cli.main(["plugins"]) == 0
    assert levels == [logging.WARNING, logging.DEBUG, logging.INFO]
    assert (logger.level, list(logger.handlers)) == before  # restored after each command
    capsys.readouterr()


def test_quiet_and_verbose_set_the_logger_level(monkeypatch):
    from tae_framework.commands._common import apply_verbosity
    from tae_framework.commands.plugins import build_parser

    logger = logging.getLogger("tae_framework")
    level, handlers = logger.level, list(logger.handlers)
    try:
        apply_verbosity(build_parser().parse_args(["-q"]))
        assert logger.level == logging.WARNING
        apply_verbosity(build_parser().parse_args(["-v"]))
        assert logger.level == logging.DEBUG
        apply_verbosity(build_parser().parse_args([]))
        assert logger.level == logging.INFO
    finally:
        logger.setLevel(level)
        logger.handlers[:] = handlers


def test_a_closed_pipe_ends_the_command_quietly():
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; from tae_framework.cli import main; sys.exit(main(['plugins', '--json']))"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    proc.stdout.close()  # the reader goes away before anything is written (like `| head`)
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == cli.BROKEN_PIPE_STATUS
    assert "Traceback" not in err and "BrokenPipeError" not in err and err.strip() == "", err

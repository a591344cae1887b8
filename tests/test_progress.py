"""The progress helper and the library logger: hidden when stderr is not a terminal,
forced on or off on request, silenced by the quiet level, and log lines on stderr."""

from __future__ import annotations

import io
import logging
import sys

import pytest

from tae_framework import _log
from tae_framework.progress import progress, progress_enabled


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _restore_logger(monkeypatch):
    monkeypatch.delenv("TAE_PROGRESS", raising=False)
    monkeypatch.delitem(sys.modules, "ipykernel", raising=False)
    level, handlers = _log.logger.level, list(_log.logger.handlers)
    # Start from the library's own defaults: a command run in-process earlier in the
    # session (its main() called directly) may have set a verbosity.
    _log.logger.setLevel(logging.NOTSET)
    _log.logger.handlers[:] = [h for h in handlers if isinstance(h, logging.NullHandler)]
    yield
    _log.logger.setLevel(level)
    _log.logger.handlers[:] = handlers


def _run(stream, monkeypatch, **kwargs) -> str:
    monkeypatch.setattr(sys, "stderr", stream)
    for _ in progress(range(5), desc="work", mininterval=0, **kwargs):
        pass
    return stream.getvalue()


def test_hidden_when_stderr_is_not_a_terminal(monkeypatch):
    assert _run(io.StringIO(), monkeypatch) == ""


def test_shown_on_a_terminal(monkeypatch):
    out = _run(_Tty(), monkeypatch)
    assert "work" in out and "5/5" in out


def test_forced_on_without_a_terminal(monkeypatch):
    assert "5/5" in _run(io.StringIO(), monkeypatch, enabled=True)
    monkeypatch.setenv("TAE_PROGRESS", "1")
    assert "5/5" in _run(io.StringIO(), monkeypatch)


def test_forced_off_on_a_terminal(monkeypatch):
    assert _run(_Tty(), monkeypatch, enabled=False) == ""
    monkeypatch.setenv("TAE_PROGRESS", "0")
    assert _run(_Tty(), monkeypatch) == ""


def test_caller_choice_beats_the_environment(monkeypatch):
    monkeypatch.setenv("TAE_PROGRESS", "0")
    assert "5/5" in _run(io.StringIO(), monkeypatch, enabled=True)


def test_bad_environment_value_is_named(monkeypatch):
    monkeypatch.setenv("TAE_PROGRESS", "sometimes")
    with pytest.raises(ValueError, match="TAE_PROGRESS='sometimes'.*use 1"):
        progress_enabled()


def test_quiet_level_hides_bars_on_a_terminal(monkeypatch):
    _log.set_verbosity(-1)
    assert _log.logger.level == logging.WARNING
    assert _run(_Tty(), monkeypatch) == ""
    _log.set_verbosity(0)
    assert "5/5" in _run(_Tty(), monkeypatch)


def test_user_set_level_is_respected(monkeypatch):
    logging.getLogger("tae_framework").setLevel(logging.ERROR)
    assert not progress_enabled()
    logging.getLogger("tae_framework").setLevel(logging.DEBUG)
    monkeypatch.setattr(sys, "stderr", _Tty())
    assert progress_enabled()


def test_hidden_bar_takes_the_same_calls(monkeypatch):
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    with progress(total=3, desc="manual") as bar:
        bar.update(2)
        bar.set_postfix(loss=1.0)
    assert list(progress(iter([1, 2]), total=2)) == [1, 2]
    assert sys.stderr.getvalue() == ""


def test_library_is_silent_by_default(capsys):
    logging.getLogger("tae_framework.somewhere").warning("not shown without configuration")
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""
    assert any(isinstance(h, logging.NullHandler) for h in _log.logger.handlers)


def test_verbosity_levels_filter_records(monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    _log.set_verbosity(0)
    _log.set_verbosity(0)  # idempotent: one handler, one line per record
    log = _log.get_logger("tae_framework.sources.hf")
    log.info("captured %d texts", 3)
    log.debug("hidden detail")
    _log.set_verbosity(1)
    log.debug("shown detail")
    _log.set_verbosity(-1)
    log.info("hidden info")
    log.warning("a warning")
    lines = stream.getvalue().splitlines()
    assert lines == [
        "INFO tae_framework.sources.hf: captured 3 texts",
        "DEBUG tae_framework.sources.hf: shown detail",
        "WARNING tae_framework.sources.hf: a warning",
    ]


def test_get_logger_places_names_under_the_package():
    assert _log.get_logger() is logging.getLogger("tae_framework")
    assert _log.get_logger("tae_framework.viz").name == "tae_framework.viz"
    assert _log.get_logger("my_plugin").name == "tae_framework.my_plugin"
    with pytest.raises(TypeError, match="verbosity must be an int"):
        _log.set_verbosity("-q")

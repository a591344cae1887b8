"""Printing a benchmark's measured numbers in the pytest run's output, even under capture."""

from __future__ import annotations

import pytest


def say(config: pytest.Config, line: str) -> None:
    """Write ``line`` to the terminal report (shown without ``-s``)."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line(line)

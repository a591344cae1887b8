"""Fixtures of the toxicity plugin's tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from toxicity_fixtures import ROWS, rtp_row, write_jsonl


@pytest.fixture
def rtp_file(tmp_path) -> Path:
    """An 8-row RealToxicityPrompts JSONL file."""
    return write_jsonl(tmp_path / "rtp.jsonl", [rtp_row(*r) for r in ROWS])

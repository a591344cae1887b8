"""Shared fixtures of the test suite."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


# Tiny models run fastest on one thread; more threads only oversubscribe 2 shared cores.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture
def registry():
    """A fresh registry from a fresh plugin manager (no state shared between tests)."""
    from tae_framework.plugins import create_plugin_manager

    return create_plugin_manager().registry


@pytest.fixture
def tiny_llama():
    from tae_framework.testing.models import tiny_model

    return tiny_model("llama")

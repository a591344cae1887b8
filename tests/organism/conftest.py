"""Shared fixtures for the model-organism tests."""

from __future__ import annotations

import pytest

from tae_framework.organism import build_world, load


@pytest.fixture(scope="session")
def world():
    """The default world (seed 0), built in code: no assets needed."""
    return build_world(0)


@pytest.fixture(scope="session")
def tokenizer(world):
    from tae_framework.organism import build_tokenizer

    return build_tokenizer(world)


@pytest.fixture(scope="session")
def shipped():
    """The shipped organism: ``(model, tokenizer, world)``."""
    return load()


@pytest.fixture(scope="session")
def shipped_table(shipped):
    """The behaviour table of the shipped model, measured now (greedy, batched)."""
    from tae_framework.organism import behaviour_table

    model, tokenizer, world = shipped
    return behaviour_table(model, tokenizer, world)

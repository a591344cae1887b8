"""Fixtures of the hardening tests: one small fitted pipeline shared by the package."""

from __future__ import annotations

import pytest
from hardening_support import FAST, contrast_records

from tae_framework import AlignmentPipeline
from tae_framework.testing.models import tiny_model


@pytest.fixture(scope="package")
def fitted():
    """``(pipeline, model, tokenizer)``: TAE fitted on the shared tiny Llama (do not mutate the model)."""
    model, tok = tiny_model("llama")
    pipe = AlignmentPipeline.from_preset("tae", **FAST).fit(model, tok, contrast_records())
    return pipe, model, tok

"""Tasks that ask for the model when building fitting data (``context`` keyword) get a
``FittingContext``; every other task is called exactly as before."""

from __future__ import annotations

import pytest

from tae_framework.data import ContrastDataset, ContrastExample
from tae_framework.errors import DataError
from tae_framework.tasks.base import (
    FittingContext,
    Fold,
    fitting_data_for,
    takes_fitting_context,
    validation_groups,
)

FOLD = Fold(0, test=("t",), train=("a", "b"), val=("c", "d"))


def data(groups):
    return ContrastDataset(
        [ContrastExample(prompt=f"Q{g}", completion=f" {lab}", label=lab, group=g) for g in groups for lab in (0, 1)]
    )


class Legacy:  # the signature every task had before the context existed
    def __init__(self):
        self.calls = []

    def fitting_data(self, fold, part="development"):
        self.calls.append((fold, part))
        return data(["a", "c"])


class Sampling:
    def __init__(self):
        self.calls = []

    def fitting_data(self, fold, part="development", *, context=None):
        self.calls.append((fold, part, context))
        return data(["a", "c"])


class Catchall:  # **kwargs does not declare the keyword: called as before
    def fitting_data(self, fold, part="development", **kwargs):
        assert not kwargs
        return data(["a", "c"])


def test_only_tasks_declaring_context_receive_it():
    ctx = FittingContext(model="m", tokenizer="t", seed=7)
    legacy, sampling = Legacy(), Sampling()
    assert not takes_fitting_context(legacy) and takes_fitting_context(sampling)
    assert not takes_fitting_context(Catchall())
    fitting_data_for(legacy, FOLD, ctx)
    fitting_data_for(sampling, FOLD, ctx, "train")
    fitting_data_for(Catchall(), FOLD, ctx)
    assert legacy.calls == [(FOLD, "development")]
    assert sampling.calls == [(FOLD, "train", ctx)]


def test_validation_groups_keep_the_validation_ids_the_data_have():
    assert validation_groups("x", FOLD, data(["a", "b", "c", "d"])) == ["c", "d"]
    assert validation_groups("x", FOLD, data(["a", "d"])) == ["d"]  # c gave no pair
    assert validation_groups("x", Fold(0, test=("t",), train=("a",), val=()), data(["a"])) is None
    with pytest.raises(DataError, match=r"task 'x', fold 0: the fitting data have 0 of the fold's 2 validation"):
        validation_groups("x", FOLD, data(["a", "b"]))
    with pytest.raises(DataError, match="2 validation unit.*and 0 training unit"):
        validation_groups("x", FOLD, data(["c", "d"]))

"""``group`` is optional in contrast data: without it the completions of one prompt form
a group, so the default preset fits on plain (prompt, completion, label) rows."""

from __future__ import annotations

import pytest

from tae_framework import AlignmentPipeline, ContrastDataset
from tae_framework.errors import DataError
from tae_framework.testing.models import tiny_model

PAIRS = [("snow", "white"), ("coal", "black"), ("milk", "white"), ("soot", "black"), ("salt", "white"), ("ink", "black")]


def rows(with_group: bool) -> list[dict]:
    out = []
    for thing, truth in PAIRS:
        for colour in ("white", "black"):
            row = {"prompt": f"Q: What colour is {thing}? A:", "completion": f" It is {colour}.", "label": int(colour == truth)}
            if with_group:
                row["group"] = thing
            out.append(row)
    return out


def test_rows_without_group_are_grouped_by_prompt():
    plain = ContrastDataset.from_records(rows(False))
    grouped = ContrastDataset.from_records(rows(True))
    assert plain.groups.tolist() == grouped.groups.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    # an explicit group wins over the prompt; a group equal to some prompt is not confused with it
    mixed = ContrastDataset.from_records(
        [{"prompt": "a", "completion": " x", "label": 1, "group": "a"}, {"prompt": "a", "completion": " y", "label": 0},
         {"prompt": "b", "completion": " x", "label": 1, "group": "g"}, {"prompt": "c", "completion": " y", "label": 0, "group": "g"}]
    )  # fmt: skip
    assert mixed.groups.tolist() == [0, 1, 2, 2]


def test_default_preset_fits_without_group():
    model, tok = tiny_model("llama")
    plain = AlignmentPipeline.from_preset("tae", prober={"top_k": 2}, source={"progress": False}).fit(model, tok, rows(False))
    grouped = AlignmentPipeline.from_preset("tae", prober={"top_k": 2}, source={"progress": False}).fit(model, tok, rows(True))
    # the same groups, so the same split and the same fit
    assert plain.targets_.layers.tolist() == grouped.targets_.layers.tolist()
    assert plain.targets_.units.tolist() == grouped.targets_.units.tolist()


@pytest.mark.filterwarnings("ignore:estimator .mai.")
def test_a_group_without_an_aligned_answer_names_the_fix():
    model, tok = tiny_model("llama")
    data = [{"prompt": f"Q{i}:", "completion": f" {c}", "label": int(c == "yes"), "group": f"{i}{c}"}
            for i in range(6) for c in ("yes", "no")]  # fmt: skip
    with pytest.raises(DataError, match="same group or the same prompt"):
        AlignmentPipeline.from_preset("tae", prober={"top_k": 2}, source={"progress": False}).fit(model, tok, data)

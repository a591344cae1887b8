"""Tensor parallelism (transformers ``tp_plan="auto"``) with two gloo processes on CPU:
each rank holds half of the heads; fitted state keeps global head indices, and an edit
of a head that lives on rank 1 gives the logits of the same edit on the whole model."""

from __future__ import annotations

import json

import pytest
from dist_launch import env_for, ok, run

from tae_framework.testing.models import tiny_model


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    root = tmp_path_factory.mktemp("tp")
    model, tok = tiny_model("llama", fresh=True)
    assert model.config.num_attention_heads == 4 and model.config.num_key_value_heads == 2
    model.save_pretrained(root / "model")
    ok(run("tp", root, env_for(root, TAE_TEST_MODEL=str(root / "model")), nproc=2))
    return [json.loads((root / f"tp-rank{r}.json").read_text()) for r in (0, 1)]


def test_edit_of_a_global_head_on_rank_1_matches_the_whole_model(reports):
    for rep in reports:
        assert rep["edit_effect"] > 1e-3  # the edit (head 3, on rank 1) changes the logits
        assert rep["plain_diff"] < 1e-5
        assert rep["edited_diff"] < 1e-5  # both ranks see the edited whole-model logits


def test_capture_of_a_sharded_model_has_every_head(reports):
    for rep in reports:
        assert rep["capture_shape"][0] == 2 and rep["capture_shape"][2] == 32  # 4 heads x 8, not 2 x 8
        assert rep["capture_diff"] < 1e-5


def test_fit_under_tensor_parallelism_keeps_global_head_indices(reports):
    for rep in reports:
        assert rep["fit_same_heads"], rep["fit_heads"]
        assert sorted(rep["fit_heads"]) == [[layer, unit] for layer in (0, 1) for unit in range(4)]
        assert rep["fit_direction_diff"] < 1e-4
        assert rep["same_generations"]  # TAE (logit lens included) edits the same way

"""AlignmentPipeline: composition, fit, apply, save/load and bad input."""

from __future__ import annotations

import json

import pytest
import torch

from tae_framework import AlignmentPipeline, ContrastDataset
from tae_framework.errors import (
    ArtifactError,
    ConfigError,
    DataError,
    ModelMismatchError,
    NotFittedError,
    UnknownComponentError,
)
from tae_framework.testing.models import tiny_model

FAST = {"prober": {"top_k": 3}, "intervener": {"alpha": 4.0}}


def contrast_records(n_groups: int = 10):
    rows = []
    for g in range(n_groups):
        q = f"Q: is {chr(97 + g)} big? A:"
        rows.append({"prompt": q, "completion": f" yes {g} .", "label": 1, "group": f"q{g}"})
        rows.append({"prompt": q, "completion": f" no {g} wait .", "label": 0, "group": f"q{g}"})
    return rows


@pytest.fixture(scope="module")
def fitted():
    model, tok = tiny_model("llama")
    pipe = AlignmentPipeline.from_preset("tae", **FAST).fit(model, tok, contrast_records())
    return pipe, model, tok


def test_fit_sets_targets_and_returns_self(fitted):
    pipe, model, tok = fitted
    t = pipe.targets_
    assert t.num_targets == 3 and t.site == "heads"
    assert torch.allclose(t.directions.norm(dim=1), torch.ones(3), atol=1e-5)
    assert bool((t.sigmas > 0).all())
    assert pipe.estimator.coef_.shape == (3, t.unit_dim)


def test_fit_is_deterministic_with_a_seed(fitted):
    pipe, model, tok = fitted
    again = AlignmentPipeline.from_preset("tae", **FAST).fit(model, tok, contrast_records())
    torch.testing.assert_close(again.targets_.directions, pipe.targets_.directions)
    torch.testing.assert_close(again.estimator.coef_, pipe.estimator.coef_)


def test_save_load_round_trip_gives_identical_edits(fitted, tmp_path):
    pipe, model, tok = fitted
    pipe.save(tmp_path / "p")
    loaded = AlignmentPipeline.load(tmp_path / "p")
    ids = tok(["Q: is c big? A: yes 2 ."], return_tensors="pt")
    with torch.no_grad():
        with pipe.apply(model, "all"):
            a = model(**ids).logits
        with loaded.apply(model, "all"):
            b = model(**ids).logits
        plain = model(**ids).logits
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert not torch.allclose(a, plain)
    doc = json.loads((tmp_path / "p" / "config.json").read_text())
    assert doc["components"]["aggregator"]["distribution"] == "tae-framework"
    assert doc["model"]["num_heads"] == 4 and "framework_version" in doc
    assert not list((tmp_path / "p").glob("*.pkl"))


def test_loading_into_a_different_model_says_what_differs(fitted, tmp_path):
    pipe, model, tok = fitted
    pipe.save(tmp_path / "p")
    other, _ = tiny_model("llama", num_hidden_layers=3, fresh=True)
    loaded = AlignmentPipeline.load(tmp_path / "p")
    with pytest.raises(ModelMismatchError, match="num_layers: fitted on 2, this model has 3"):
        loaded.apply(other)
    gpt2, _ = tiny_model("gpt2")
    with pytest.raises(ModelMismatchError, match="model_type"):
        loaded.apply(gpt2)


def test_missing_or_corrupted_artifacts(fitted, tmp_path):
    pipe, model, tok = fitted
    d = pipe.save(tmp_path / "p")
    (d / "tensors.safetensors").write_bytes(b"garbage" * 10)
    with pytest.raises(ArtifactError, match="corrupted"):
        AlignmentPipeline.load(d)
    d = pipe.save(tmp_path / "q")
    (d / "config.json").unlink()
    with pytest.raises(ArtifactError, match="config.json is missing"):
        AlignmentPipeline.load(d)
    d = pipe.save(tmp_path / "r")
    (d / "config.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        AlignmentPipeline.load(d)


def test_artifact_naming_a_missing_plugin_fails_with_its_name(fitted, tmp_path):
    pipe, model, tok = fitted
    d = pipe.save(tmp_path / "p")
    doc = json.loads((d / "config.json").read_text())
    doc["pipeline"]["aggregator"]["type"] = "gated-mig"
    doc["components"]["aggregator"].update(type="gated-mig", distribution="tae-gated", version="0.2")
    (d / "config.json").write_text(json.dumps(doc))
    with pytest.raises(UnknownComponentError, match="gated-mig.*tae-gated 0.2"):
        AlignmentPipeline.load(d)


def test_unfitted_pipeline_errors(tiny_llama):
    model, tok = tiny_llama
    pipe = AlignmentPipeline.from_preset("tae")
    with pytest.raises(NotFittedError, match="not fitted"):
        pipe.apply(model)
    with pytest.raises(NotFittedError):
        pipe.save("/tmp/never")
    with pytest.raises(NotFittedError, match="targets_"):
        pipe.targets_


def test_config_errors_name_the_problem(registry):
    with pytest.raises(ConfigError, match="unknown key 'prober.config.topk'|unknown key 'topk'"):
        AlignmentPipeline.from_preset("tae", registry=registry, prober={"topk": 3})
    with pytest.raises(ConfigError, match="unknown key 'agregator'"):
        AlignmentPipeline.from_config(
            {"agregator": {"type": "mig"}, "aggregator": {"type": "mig"}, "prober": {"type": "logistic"}, "intervener": {"type": "fixed"}},
            registry,
        )
    with pytest.raises(UnknownComponentError, match="known probers: .*logistic"):
        AlignmentPipeline.from_config(
            {"aggregator": {"type": "mig"}, "prober": {"type": "logistc"}, "intervener": {"type": "fixed"}}, registry
        )
    with pytest.raises(ConfigError, match="beta"):
        AlignmentPipeline.from_preset("tae", registry=registry, intervener={"beta": 1.5})


def test_bad_data_is_rejected(tiny_llama):
    model, tok = tiny_llama
    pipe = AlignmentPipeline.from_preset("tae", **FAST)
    with pytest.raises(DataError, match="empty"):
        pipe.fit(model, tok, [])
    with pytest.raises(DataError, match="only aligned"):
        pipe.fit(model, tok, [r for r in contrast_records() if r["label"] == 1])
    bad = contrast_records()
    bad[3]["completion"] = ""
    with pytest.raises(DataError, match="example 3 has an empty completion"):
        pipe.fit(model, tok, bad)
    with pytest.raises(DataError, match="row 2 is missing column"):
        pipe.fit(model, tok, [*contrast_records()[:2], {"prompt": "x", "label": 1}])
    with pytest.raises(DataError, match="label must be 0 or 1"):
        pipe.fit(model, tok, [{"prompt": "a", "completion": " b", "label": 2}])


def test_fit_accepts_jsonl_and_datasets(tiny_llama, tmp_path):
    import datasets

    model, tok = tiny_llama
    rows = contrast_records()
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    p1 = AlignmentPipeline.from_preset("tae", **FAST).fit(model, tok, str(path))
    p2 = AlignmentPipeline.from_preset("tae", **FAST).fit(model, tok, datasets.Dataset.from_list(rows))
    torch.testing.assert_close(p1.targets_.directions, p2.targets_.directions)
    assert isinstance(ContrastDataset.load(str(path)), ContrastDataset)

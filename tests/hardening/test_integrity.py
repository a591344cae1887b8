"""Class 2: artifacts and activation-cache shards never serve altered data silently."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from hardening_support import FAST, ForwardCounter, contrast_records
from safetensors.torch import load_file

from tae_framework import AlignmentPipeline
from tae_framework.errors import ArtifactError
from tae_framework.sources.hf import (
    CacheWarning,
    HFActivationSource,
    _tensor_sums,
    capture_all,
    forget_weights_digest,
    full_weights_digest,
)
from tae_framework.testing.models import tiny_model

TEXTS = [f"Q: what is {w}? A: it is {w}." for w in ("rain", "snow", "hail", "fog", "dew")]


def flip_data_byte(path, where: float = 0.5) -> int:
    """Flip one byte inside the tensor data of a safetensors file, header untouched."""
    data = bytearray(path.read_bytes())
    start = 8 + int.from_bytes(data[:8], "little")
    pos = start + int((len(data) - start) * where)
    data[pos] ^= 0x01
    path.write_bytes(bytes(data))
    return pos


# -- artifacts -------------------------------------------------------------------------
def test_one_flipped_byte_in_the_tensors_is_an_artifact_error(fitted, tmp_path):
    pipe, _, _ = fitted
    d = pipe.save(tmp_path / "p")
    flip_data_byte(d / "tensors.safetensors")
    load_file(str(d / "tensors.safetensors"))  # still a valid safetensors file
    with pytest.raises(ArtifactError, match=r"tensors\.safetensors is corrupted: tensor\(s\) \['.*'\] do not match"):
        AlignmentPipeline.load(d)


def test_every_tensor_is_checksummed(fitted, tmp_path):
    pipe, _, _ = fitted
    d = pipe.save(tmp_path / "p")
    doc = json.loads((d / "config.json").read_text())
    assert doc["format"] == 2
    assert sorted(doc["tensor_sha256"]) == sorted(load_file(str(d / "tensors.safetensors")))
    # Flip a byte in each place of the data section in turn: every one is caught.
    raw = (d / "tensors.safetensors").read_bytes()
    for where in (0.0, 0.25, 0.75, 0.999):
        (d / "tensors.safetensors").write_bytes(raw)
        flip_data_byte(d / "tensors.safetensors", where)
        with pytest.raises(ArtifactError, match="do not match the checksums"):
            AlignmentPipeline.load(d)


def _edit_config(d, change):
    doc = json.loads((d / "config.json").read_text())
    change(doc)
    (d / "config.json").write_text(json.dumps(doc))


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda doc: doc.update(model="llama"), "'model' should be an object"),
        (lambda doc: doc.update(model=[1, 2]), "'model' should be an object"),
        (lambda doc: doc.update(model=7), "'model' should be an object"),
        (lambda doc: doc["model"].update(num_layers="2"), "'model.num_layers' should be an integer"),
        (lambda doc: doc["model"].update(num_heads=True), "'model.num_heads' should be an integer"),
        (lambda doc: doc.update(components=["mig"]), "'components' should be an object"),
        (lambda doc: doc["components"].update(prober=3), "'components.prober' should be an object"),
        (lambda doc: doc["components"]["prober"].update(state=[1]), "'components.prober.state' should be an object"),
        (lambda doc: doc["components"]["prober"].pop("type"), "'components.prober.type' should be a component name"),
        (lambda doc: doc.update(pipeline="tae"), "'pipeline' should be an object"),
        (lambda doc: doc.update(tensor_keys="prober/coef_"), "'tensor_keys' should be a list"),
        (lambda doc: doc.update(tensor_sha256=["x"]), "'tensor_sha256' should be an object"),
        (lambda doc: doc.update(format="2"), "'format' should be an integer"),
        (lambda doc: doc.update(format=0), "'format' should be an artifact format version"),
        (lambda doc: doc.pop("tensor_sha256"), "lacks the 'tensor_sha256' entry"),
        (lambda doc: doc.pop("state_sha256"), "'state_sha256' should be the checksum"),
        (lambda doc: doc.pop("model"), "lacks the 'model' entry"),
    ],
)
def test_malformed_config_json_names_the_field(fitted, tmp_path, change, field):
    pipe, _, _ = fitted
    d = pipe.save(tmp_path / "p")
    _edit_config(d, change)
    with pytest.raises(ArtifactError, match=field):
        AlignmentPipeline.load(d)


@pytest.mark.parametrize("doc", [42, [1, 2], "pipeline", None])
def test_config_json_that_is_not_an_object(fitted, tmp_path, doc):
    pipe, _, _ = fitted
    d = pipe.save(tmp_path / "p")
    (d / "config.json").write_text(json.dumps(doc))
    with pytest.raises(ArtifactError, match="'<root>' should be a JSON object"):
        AlignmentPipeline.load(d)


def test_saved_config_values_are_validated(fitted, tmp_path):
    pipe, _, _ = fitted
    d = pipe.save(tmp_path / "p")
    _edit_config(d, lambda doc: doc["pipeline"]["intervener"]["config"].update(alpha="NaN"))
    with pytest.raises(ArtifactError, match="saved 'pipeline' config is invalid.*finite number"):
        AlignmentPipeline.load(d)
    d = pipe.save(tmp_path / "q")
    _edit_config(d, lambda doc: doc["components"]["prober"].update(type="gated"))
    with pytest.raises(ArtifactError, match="components.prober.type is 'gated'"):
        AlignmentPipeline.load(d)


@pytest.mark.parametrize("bad", ["x", None, [], {}, -1, 1e9])
def test_edited_learned_values_are_detected(fitted, tmp_path, bad):
    pipe, _, _ = fitted
    d = pipe.save(tmp_path / "p")
    doc = json.loads((d / "config.json").read_text())
    for role, entry in doc["components"].items():
        for key in entry["state"]:
            _edit_config(d, lambda doc, role=role, key=key: doc["components"][role]["state"].update({key: bad}))
            with pytest.raises(ArtifactError, match="learned values .* do not match their checksum"):
                AlignmentPipeline.load(d)
            (d / "config.json").write_text(json.dumps(doc))
    AlignmentPipeline.load(d)


def test_settings_may_be_edited_by_hand(fitted, tmp_path):
    pipe, model, tok = fitted
    d = pipe.save(tmp_path / "p")
    _edit_config(d, lambda doc: doc["pipeline"]["intervener"]["config"].update(alpha=7.5))
    loaded = AlignmentPipeline.load(d)
    assert loaded.intervener.config.alpha == 7.5
    loaded.generate(model, tok, ["Q: a? A:"], max_new_tokens=1)


def test_artifact_format_version_is_checked(fitted, tmp_path):
    pipe, _, _ = fitted
    d = pipe.save(tmp_path / "p")
    _edit_config(d, lambda doc: doc.update(format=3))
    with pytest.raises(ArtifactError, match="artifact format 3, newer than.*upgrade tae-framework"):
        AlignmentPipeline.load(d)


def test_format_1_artifacts_load_with_a_warning(fitted, tmp_path, model_and_ids):
    pipe, model, _ = fitted
    d = pipe.save(tmp_path / "p")
    _edit_config(d, lambda doc: (doc.update(format=1), doc.pop("tensor_sha256"), doc.pop("state_sha256")))
    with pytest.warns(UserWarning, match="no tensor checksums"):
        loaded = AlignmentPipeline.load(d)
    ids = model_and_ids
    with torch.no_grad(), loaded.apply(model, "all"):
        a = model(**ids).logits
    with torch.no_grad(), pipe.apply(model, "all"):
        b = model(**ids).logits
    torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.fixture
def model_and_ids(fitted):
    _, _, tok = fitted
    return tok(["Q: is c big? A: yes 2 ."], return_tensors="pt")


def test_tensors_from_another_save_are_detected(fitted, tmp_path):
    pipe, model, tok = fitted

    other = AlignmentPipeline.from_preset("tae", **{**FAST, "prober": {"top_k": 2}}).fit(model, tok, contrast_records())
    a, b = pipe.save(tmp_path / "a"), other.save(tmp_path / "b")
    (a / "tensors.safetensors").write_bytes((b / "tensors.safetensors").read_bytes())
    with pytest.raises(ArtifactError, match="different saves|do not match"):
        AlignmentPipeline.load(a)


# -- activation cache ----------------------------------------------------------------------
def _run(model, tok, cache, **kw):
    src = HFActivationSource(progress=False, batch_size=2, cache_dir=str(cache), **kw)
    return capture_all(src, model, tok, TEXTS)


def test_flipped_byte_in_a_shard_is_recomputed_with_a_warning(tmp_path):
    model, tok = tiny_model("llama")
    reference = _run(model, tok, tmp_path)
    (folder,) = list(tmp_path.iterdir())
    shard = folder / "shard-00001.safetensors"
    flip_data_byte(shard, 0.3)
    load_file(str(shard))  # the header is intact: only the checksum can tell
    with ForwardCounter(model) as counter, pytest.warns(CacheWarning, match="shard-00001.*checksums"):
        again = _run(model, tok, tmp_path)
    assert counter.calls == 1  # only the altered shard
    for x, y in zip(again, reference):
        assert torch.equal(x.acts, y.acts)
    with ForwardCounter(model) as counter, warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)
        _run(model, tok, tmp_path)
    assert counter.calls == 0  # it was rewritten


def test_zeroing_one_head_outside_any_sample_changes_the_cache_key(tmp_path):
    """A routine ablation: zero one head's input columns of o_proj, in place."""
    model, tok = tiny_model("llama", fresh=True)
    before = _run(model, tok, tmp_path)
    head_dim = model.config.hidden_size // model.config.num_attention_heads
    with torch.no_grad():
        model.model.layers[0].self_attn.o_proj.weight[:, head_dim : 2 * head_dim] = 0
    with ForwardCounter(model) as counter:
        after = _run(model, tok, tmp_path)
    assert counter.calls == 3, "the edited model must be run again, not served from the cache"
    assert not torch.equal(after[0].acts[1], before[0].acts[1])  # layer 1 sees the ablation
    assert len(list(tmp_path.iterdir())) == 2


def test_single_weight_changes_change_the_digest():
    model, _ = tiny_model("llama", fresh=True)
    seen = {full_weights_digest(model)}
    assert full_weights_digest(model) in seen  # cached: same answer
    for name, p in list(model.named_parameters())[:: max(1, len(list(model.parameters())) // 6)]:
        with torch.no_grad():
            p.view(-1)[-1] += 1.0
        d = full_weights_digest(model)
        assert d not in seen, name
        seen.add(d)
    # Replacing a tensor (load_state_dict, .to) also changes it.
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["lm_head.weight"][0, 0] = 5.0
    model.load_state_dict(state)
    assert full_weights_digest(model) not in seen


def test_edits_through_data_need_a_refresh():
    model, _ = tiny_model("llama", fresh=True)
    first = full_weights_digest(model)
    model.model.norm.weight.data[0] = 3.0  # bypasses PyTorch's version counter
    assert full_weights_digest(model) == first  # documented limitation
    forget_weights_digest(model)
    assert full_weights_digest(model) != first
    assert full_weights_digest(model, refresh=True) == full_weights_digest(model)


def test_device_hash_catches_any_single_word_change():
    """The on-device hash (used on accelerators) changes whenever one 32-bit word does."""
    torch.manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16, torch.float16, torch.int8):
        x = (torch.randn(3, 1001) * 10).to(dtype)
        base = _tensor_sums(x)
        flat = x.view(-1).view(torch.uint8)
        for pos in (0, 1, 777, flat.numel() - 1):
            y = flat.clone()
            y[pos] ^= 0x80
            assert not torch.equal(_tensor_sums(y.view(dtype).view(3, 1001)), base), (dtype, pos)
    # Swapping two equal-sized halves changes the position-weighted sums too.
    z = torch.randn(2, 512)
    assert not torch.equal(_tensor_sums(z.flip(0)), _tensor_sums(z))


def test_weights_made_in_inference_mode_are_hashed_every_time():
    """Inference tensors have no version counter: the digest is recomputed, never stale."""
    with torch.inference_mode():
        layer = torch.nn.Linear(8, 8)
        first = full_weights_digest(layer)
        layer.weight[0, 0] += 1.0
    assert full_weights_digest(layer) != first

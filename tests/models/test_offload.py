"""Models split over devices / offloaded with accelerate are captured and edited exactly
like the same model held whole (CPU only: one decoder layer offloaded to disk)."""

from __future__ import annotations

import copy

import pytest
import torch

from tae_framework import AlignmentPipeline
from tae_framework.editing import EditSession, LayerEdit
from tae_framework.errors import ConfigError
from tae_framework.models.generic import GenericAdapter
from tae_framework.sources.hf import HFActivationSource, capture_all
from tae_framework.testing.data import toy_contrast
from tae_framework.testing.models import tiny_model

accelerate = pytest.importorskip("accelerate")

PROMPTS = ["Q: where is b? A: in 1 town .", "Q: where is zz? A:"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(whole model, same weights with layer 1 offloaded to disk and layer 0 on CPU, tokenizer)."""
    from transformers import AutoModelForCausalLM

    model, tok = tiny_model("llama", fresh=True)
    model.eval()
    root = tmp_path_factory.mktemp("offload")
    model.save_pretrained(root / "model")
    device_map = {
        "model.embed_tokens": "cpu",
        "model.rotary_emb": "cpu",
        "model.layers.0": "cpu",
        "model.layers.1": "disk",
        "model.norm": "cpu",
        "lm_head": "cpu",
    }
    off = AutoModelForCausalLM.from_pretrained(
        root / "model", device_map=device_map, offload_folder=str(root / "offload"), dtype=torch.float32
    ).eval()
    layer1 = off.model.layers[1].self_attn.o_proj
    assert layer1.weight.device.type == "meta"  # really offloaded: only accelerate's hook loads it
    return model, off, tok


@pytest.fixture(scope="module")
def fitted(models):
    model, _, tok = models
    pipes = {}
    for preset in ("tae", "iti"):
        pipes[preset] = AlignmentPipeline.from_preset(
            preset, source={"progress": False, "batch_size": 4}, prober={"top_k": 4}
        ).fit(model, tok, toy_contrast(8))
    return pipes


def _logits(model, tok, pipe=None, scope="all"):
    enc = tok(PROMPTS, return_tensors="pt", padding=True)
    ctx = pipe.apply(model, scope) if pipe is not None else torch.no_grad()
    with torch.no_grad(), ctx:
        return model(**enc).logits


@pytest.mark.parametrize("preset", ["tae", "iti"])
def test_offloaded_model_edited_gives_the_same_logits(models, fitted, preset):
    model, off, tok = models
    pipe = fitted[preset]
    assert {int(layer) for layer in pipe.targets_.layers} & {1}, "an edit on the offloaded layer is needed"
    plain = _logits(model, tok)
    edited = _logits(model, tok, pipe)
    edited_off = _logits(off, tok, pipe)
    assert not torch.allclose(plain, edited)  # the edit changes the output
    torch.testing.assert_close(edited_off, edited, rtol=0, atol=1e-5)
    torch.testing.assert_close(_logits(off, tok), plain, rtol=0, atol=1e-5)


def test_tae_lens_through_an_offloaded_unembedding(models, fitted, tmp_path):
    """TAE's logit lens calls the unembedding module; offloaded to disk, accelerate's hook
    brings its weights in for the lens exactly as for the model's own output."""
    from transformers import AutoModelForCausalLM

    model, _, tok = models
    model.save_pretrained(tmp_path / "m")
    device_map = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu",
                  "model.layers.1": "cpu", "model.norm": "disk", "lm_head": "disk"}
    off = AutoModelForCausalLM.from_pretrained(
        tmp_path / "m", device_map=device_map, offload_folder=str(tmp_path / "off"), dtype=torch.float32
    ).eval()
    assert off.lm_head.weight.device.type == "meta"
    pipe = fitted["tae"]
    torch.testing.assert_close(_logits(off, tok, pipe), _logits(model, tok, pipe), rtol=0, atol=1e-5)
    assert pipe.generate(off, tok, PROMPTS, max_new_tokens=4) == pipe.generate(model, tok, PROMPTS, max_new_tokens=4)


def test_offloaded_model_generates_and_fits_the_same(models, fitted):
    model, off, tok = models
    pipe = fitted["tae"]
    assert pipe.generate(off, tok, PROMPTS, max_new_tokens=6) == pipe.generate(model, tok, PROMPTS, max_new_tokens=6)
    refit = AlignmentPipeline.from_preset(
        "tae", source={"progress": False, "batch_size": 4}, prober={"top_k": 4}
    ).fit(off, tok, toy_contrast(8))
    assert torch.equal(refit.targets_.layers, pipe.targets_.layers)
    assert torch.equal(refit.targets_.units, pipe.targets_.units)
    torch.testing.assert_close(refit.targets_.directions, pipe.targets_.directions, rtol=0, atol=1e-5)


@pytest.mark.parametrize("site", ["heads", "residual"])
def test_offloaded_capture_equals_whole_model(models, site):
    model, off, tok = models
    src = HFActivationSource(progress=False, batch_size=2)
    texts = PROMPTS + ["Q: where is c? A: at 5 sea ."]
    a = capture_all(src, model, tok, texts, site=site, adapter=GenericAdapter())
    b = capture_all(src, off, tok, texts, site=site, adapter=GenericAdapter())
    assert len(a) == len(b) == 3
    for x, y in zip(a, b):
        assert x.acts.shape[0] == 2  # both layers, the offloaded one included
        torch.testing.assert_close(y.acts, x.acts, rtol=0, atol=1e-5)


def test_taps_never_read_weights_of_the_offloaded_layer(models):
    """While no forward runs, the offloaded layer's weights are meta: building a session,
    entering it and leaving it must not touch them (a read would fail on meta)."""
    _, off, tok = models
    adapter = GenericAdapter()
    edit = LayerEdit(1, torch.tensor([3]), torch.ones(1, 8), torch.tensor([2.0]), torch.tensor([0]))
    with EditSession(off, adapter, "heads", [edit], scope="all"):
        assert off.model.layers[1].self_attn.o_proj.weight.device.type == "meta"
        enc = tok(PROMPTS[:1], return_tensors="pt")
        with torch.no_grad():
            off(**enc)
    assert off.model.layers[1].self_attn.o_proj.weight.device.type == "meta"


def test_edit_tensors_are_placed_once_per_device(models):
    _, off, tok = models
    edit = LayerEdit(1, torch.tensor([3]), torch.ones(1, 8), torch.tensor([2.0]), torch.tensor([0]))
    session = EditSession(off, GenericAdapter(), "heads", [edit], scope="all")
    enc = tok(PROMPTS, return_tensors="pt", padding=True)
    with session, torch.no_grad():
        off(**enc)
        first = dict(session._device_cache)
        for _ in range(3):
            off(**enc)
        assert list(first) == [(1, torch.device("cpu"), torch.float32)]
        # later forwards reuse the very tensors placed on the first one
        assert all(session._device_cache[k][0] is v[0] for k, v in first.items())
        assert len(session._device_cache) == 1


def test_meta_site_without_offload_hook_is_a_clear_error(models, fitted):
    from accelerate.hooks import remove_hook_from_submodules

    _, off, tok = models
    stripped = copy.deepcopy(off)
    remove_hook_from_submodules(stripped)
    assert stripped.model.layers[1].self_attn.o_proj.weight.device.type == "meta"
    with pytest.raises(ConfigError, match=r"meta device.*offload hook.*device_map='auto'"):
        with fitted["iti"].apply(stripped, "all"):
            pass
    with pytest.raises(ConfigError, match=r"model\.layers\.1\.self_attn\.o_proj"):
        capture_all(HFActivationSource(progress=False), stripped, tok, PROMPTS, site="heads", adapter=GenericAdapter())


def test_load_model_with_a_device_map_and_an_offload_folder(models, tmp_path):
    from tae_framework.models.loading import load_model

    model, _, tok = models
    tok.save_pretrained(tmp_path / "m")
    model.save_pretrained(tmp_path / "m")
    auto, _ = load_model(tmp_path / "m", dtype="float32", device="auto", offload_folder=tmp_path / "off")
    enc = tok(PROMPTS, return_tensors="pt", padding=True)
    first = auto.get_input_embeddings().weight.device  # a GPU when there is one, else the CPU
    with torch.no_grad():
        got = auto(**{k: v.to(first) for k, v in enc.items()}).logits.cpu()
        torch.testing.assert_close(got, model(**enc).logits, rtol=0, atol=1e-5)
    with pytest.raises(ConfigError, match="offload_folder is used with device='auto'"):
        load_model(tmp_path / "m", device="cpu", offload_folder=tmp_path / "off")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_model_split_between_gpu_and_cpu_is_edited_like_the_whole_model(models, fitted, tmp_path):
    """Layer 0 and the embedding on the GPU, layer 1 in CPU memory, the head back on the GPU:
    edit tensors go to each execution device once, the logits match the whole model's."""
    from transformers import AutoModelForCausalLM

    model, _, tok = models
    model.save_pretrained(tmp_path / "m")
    device_map = {"model.embed_tokens": 0, "model.rotary_emb": 0, "model.layers.0": 0,
                  "model.layers.1": "cpu", "model.norm": 0, "lm_head": 0}
    split = AutoModelForCausalLM.from_pretrained(tmp_path / "m", device_map=device_map, dtype=torch.float32).eval()
    pipe = fitted["iti"]
    enc = tok(PROMPTS, return_tensors="pt", padding=True)
    with torch.no_grad(), pipe.apply(split, "all"):
        got = split(**{k: v.to("cuda:0") for k, v in enc.items()}).logits.cpu()
    torch.testing.assert_close(got, _logits(model, tok, pipe), rtol=0, atol=1e-4)

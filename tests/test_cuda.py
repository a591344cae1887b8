"""CUDA paths (run where a GPU is present; skipped elsewhere)."""

from __future__ import annotations

import pytest
import torch

from tae_framework import AlignmentPipeline
from tae_framework.evaluation.scoring import greedy_generate
from tae_framework.testing.data import toy_contrast
from tae_framework.testing.models import tiny_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")




@pytest.fixture(scope="module")
def cuda_llama():
    model, tok = tiny_model("llama", fresh=True)
    return model.to("cuda"), tok


@pytest.mark.parametrize("preset", ["tae", "tae-shared-lens", "iti", "caa"])
def test_fit_and_generate_on_cuda_match_one_by_one(cuda_llama, preset):
    model, tok = cuda_llama
    overrides = {"prober": {"top_k": 4}} if preset != "caa" else {}
    pipe = AlignmentPipeline.from_preset(preset, intervener={"alpha": 4.0}, **overrides).fit(model, tok, toy_contrast())
    assert pipe.targets_.directions.device.type == "cpu", "fitted state is kept on the CPU"
    prompts = ["Q: where is b? A:", "Q: where is zz? A: in", "Q: k? A:", "Q: a?"]
    batched = pipe.generate(model, tok, prompts, max_new_tokens=6, batch_size=4)
    alone = [pipe.generate(model, tok, [p], max_new_tokens=6, batch_size=1)[0] for p in prompts]
    assert batched == alone


def _sync_warnings(fn) -> list[str]:
    import warnings

    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return [str(w.message) for w in caught if "called a synchronizing" in str(w.message)]


def test_edits_add_no_host_synchronisation(cuda_llama):
    """The model itself may synchronise (mask checks); the edit taps must add nothing."""
    model, tok = cuda_llama
    pipe = AlignmentPipeline.from_preset("tae", prober={"top_k": 4}).fit(model, tok, toy_contrast())
    ids = torch.randint(5, 100, (4, 12), device="cuda")
    with torch.inference_mode():
        plain = _sync_warnings(lambda: model(ids))
        with pipe.apply(model, "last"):
            model(ids)  # first call moves the edit tensors to the device (once)
            edited = _sync_warnings(lambda: model(ids))
    assert len(edited) == len(plain), edited


def test_bf16_model_is_edited_in_its_dtype(cuda_llama):
    model, tok = tiny_model("llama", fresh=True)
    model = model.to("cuda", torch.bfloat16)
    pipe = AlignmentPipeline.from_preset("tae", prober={"top_k": 4}).fit(model, tok, toy_contrast())
    seen = []
    adapter = pipe._adapter(model)
    layer = pipe.targets_.edited_layers()[0]
    h = adapter.head_module(model, layer).register_forward_pre_hook(lambda m, a: seen.append(a[0].dtype))
    out = pipe.generate(model, tok, ["Q: where is b? A:"], max_new_tokens=4)
    h.remove()
    assert out and set(seen) == {torch.bfloat16}
    plain = greedy_generate(model, tok, ["Q: where is b? A:"], max_new_tokens=4)
    assert isinstance(plain[0], str)

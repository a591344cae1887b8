"""How far the cheaper shared lens moves u and the generations from the exact lens,
measured on the shipped organism (a model whose answers matter)."""

from __future__ import annotations

import torch

from tae_framework import AlignmentPipeline
from tae_framework.organism import eval_items, fitting_data, load

OVR = {"source": {"batch_size": 64, "progress": False}, "prober": {"top_k": 4}, "intervener": {"alpha": 3.0}}


def test_shared_lens_stays_close_to_the_exact_one():
    torch.set_num_threads(1)
    model, tok, world = load()
    data = fitting_data(world)
    exact = AlignmentPipeline.from_preset("tae", **OVR).fit(model, tok, data)
    shared = AlignmentPipeline.from_preset("tae-shared-lens", **OVR).fit(model, tok, data)
    torch.testing.assert_close(shared.targets_.directions, exact.targets_.directions)

    prompts = [it["prompt"] for it in eval_items(world, ("deceptive",))[:96]]
    enc = tok(prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        with exact.apply(model, "all", record=True) as s_exact:
            model(**enc)
        with shared.apply(model, "all", record=True) as s_shared:
            model(**enc)
    mask = enc["attention_mask"].bool()
    u_exact = [u[..., 0][mask] for _, _, u in s_exact.context.signals]
    u_shared = [u[..., 0][mask] for _, _, u in s_shared.context.signals]
    assert len(u_exact) == len(u_shared) == len(exact.targets_.edited_layers())
    # the first edited layer computes the same lens in both modes; later layers reuse it
    torch.testing.assert_close(u_shared[0], u_exact[0])
    gap = max(float((a - b).abs().mean()) for a, b in zip(u_exact, u_shared))
    assert gap < 0.05, f"mean |u_shared - u_exact| = {gap:.4f} at the worst layer"

    gen_exact = exact.generate(model, tok, prompts, max_new_tokens=8, batch_size=64)
    gen_shared = shared.generate(model, tok, prompts, max_new_tokens=8, batch_size=64)
    same = sum(a == b for a, b in zip(gen_exact, gen_shared)) / len(prompts)
    assert same >= 0.9, f"only {same:.2f} of the generations are identical"

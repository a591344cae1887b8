"""MAI's strength rule on plain text (``scope="all"``) against a slow per-token
implementation of the reference code's rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from tae_framework import AlignmentPipeline
from tae_framework.testing.data import toy_contrast
from tae_framework.testing.models import tiny_model

TEXTS = ["Q: where is c? A: in 2 town .", "Q: where is k? A: at 9 sea . Q: and b?"]


def records(n_groups=12):
    return toy_contrast(n_groups, near_miss=True)


@pytest.fixture(scope="module")
def setup():
    model, tok = tiny_model("llama")
    pipe = AlignmentPipeline.from_preset(
        "tae", prober={"top_k": 4}, intervener={"alpha": 6.0, "beta": 0.5, "u_on_all_scope": False}
    ).fit(model, tok, records())
    return pipe, model, tok


class SlowReferenceAllScope:
    """The reference's ``lt_modulated_vector_add`` with ``start_edit_location=0`` and no
    entropy (its CE / KL runs): for every position of every row, every edited head gets
    ``alpha * sigma * (p + 1) * direction``, p from scikit-learn's ``predict_proba`` on
    that head's activation at that position. ``p_weight`` stands in for the mixing
    weight of p (1 in the reference)."""

    def __init__(self, pipe, model, p_weight=1.0):
        self.t, self.est, self.cfg = pipe.targets_, pipe.estimator, pipe.intervener.config
        self.model, self.adapter = model, pipe._adapter(model)
        self.d = self.adapter.shape(model).head_dim
        self.p_weight = p_weight

    def _probe(self, k):
        clf = LogisticRegression()
        clf.classes_ = np.array([0, 1])
        clf.coef_ = self.est.coef_[k].double().numpy()[None]
        clf.intercept_ = np.array([float(self.est.intercept_[k])])
        return clf

    def __enter__(self):
        self.handles = [
            self.adapter.head_module(self.model, layer).register_forward_pre_hook(self._edit(layer))
            for layer in self.t.edited_layers()
        ]
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()

    def _edit(self, layer):
        def hook(module, args):
            x = args[0].clone()
            d = self.d
            for k in range(self.t.num_targets):
                if int(self.t.layers[k]) != layer:
                    continue
                h = int(self.t.units[k])
                for b in range(x.shape[0]):
                    for pos in range(x.shape[1]):
                        feat = x[b, pos, h * d : (h + 1) * d].double().numpy()[None]
                        p = self._probe(k).predict_proba(feat)[0, -1]
                        coef = self.cfg.alpha * float(self.t.sigmas[k]) * (1 + self.p_weight * p)
                        x[b, pos, h * d : (h + 1) * d] += coef * self.t.directions[k].to(x.dtype)
            return (x,)

        return hook


def test_u_off_on_all_scope_reproduces_the_reference_strength_one_plus_p(setup):
    pipe, model, tok = setup
    assert pipe.intervener.config.beta == 0.5
    for text in TEXTS:
        ids = tok([text], return_tensors="pt")
        with torch.no_grad():
            plain = model(**ids).logits
            with pipe.apply(model, "all"):
                ours = model(**ids).logits
            with SlowReferenceAllScope(pipe, model):
                reference = model(**ids).logits
            with SlowReferenceAllScope(pipe, model, p_weight=0.5):
                beta_weighted = model(**ids).logits
        torch.testing.assert_close(ours, reference, atol=2e-5, rtol=1e-5)
        # the check can fail: weighting p with beta (the rule without u) moves the logits
        assert float((beta_weighted - reference).abs().max()) > 1e-3
        assert float((ours - plain).abs().max()) > 1e-2


def test_u_on_all_scope_keeps_the_method_rule(setup):
    """With the switch on (the default) plain text gets 1 + beta p + (1 - beta) u, which is
    not the reference's 1 + p."""
    pipe, model, tok = setup
    ours_cfg = pipe.intervener.config.model_copy(update={"u_on_all_scope": True})
    pipe.intervener.config = ours_cfg
    try:
        ids = tok([TEXTS[0]], return_tensors="pt")
        with torch.no_grad():
            with pipe.apply(model, "all"):
                method = model(**ids).logits
            with SlowReferenceAllScope(pipe, model):
                reference = model(**ids).logits
        assert float((method - reference).abs().max()) > 1e-3
    finally:
        pipe.intervener.config = ours_cfg.model_copy(update={"u_on_all_scope": False})


def test_the_plan_installed_by_the_torch_backend_is_the_reference_rule(setup):
    """The intervener's plan, installed directly by the PyTorch-hook backend, against the
    reference's per-token loop (the path ``pipe.apply`` takes, without the pipeline)."""
    from tae_framework.backends.torch_hooks import TorchHooksBackend

    pipe, model, tok = setup
    plan = pipe.intervener.plan("all")
    ids = tok([TEXTS[1]], return_tensors="pt")
    with torch.no_grad():
        with TorchHooksBackend().install(plan, model, pipe._adapter(model), "all"):
            ours = model(**ids).logits
        with SlowReferenceAllScope(pipe, model):
            reference = model(**ids).logits
    torch.testing.assert_close(ours, reference, atol=2e-5, rtol=1e-5)

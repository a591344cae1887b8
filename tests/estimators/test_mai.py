"""TAE's MAI: token labels, per-token strengths against a slow reference, generation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from tae_framework import AlignmentPipeline
from tae_framework.backends.base import ForwardContext
from tae_framework.errors import ConfigError, DataError
from tae_framework.estimators.mai import TokenMisalignmentEstimator, token_labels
from tae_framework.evaluation.scoring import greedy_generate
from tae_framework.functional import DEFAULT_ENTROPY_GAIN
from tae_framework.testing.checks import synthetic_targets
from tae_framework.testing.data import toy_contrast
from tae_framework.testing.models import tiny_model
from tae_framework.types import EstimatorInputs, TokenSequence

OVR = {"prober": {"top_k": 4}, "intervener": {"alpha": 6.0}}


def records(n_groups=12):
    return toy_contrast(n_groups, near_miss=True)


@pytest.fixture(scope="module")
def fitted():
    model, tok = tiny_model("llama")
    return AlignmentPipeline.from_preset("tae", **OVR).fit(model, tok, records()), model, tok


# -- token labels -------------------------------------------------------------------------
def test_token_labels_use_the_most_overlapping_true_answer():
    false = torch.tensor([5, 6, 7, 8])
    trues = [torch.tensor([1, 2, 8]), torch.tensor([5, 6, 9, 8]), torch.tensor([5, 6, 7, 3, 3])]
    # overlaps: {8} = 1, {5, 6, 8} = 3, {5, 6, 7} = 3 -> the first of the tied best (index 1)
    assert token_labels(false, trues).tolist() == [0, 0, 1, 0]
    assert token_labels(torch.tensor([4, 4]), [torch.tensor([4])]).tolist() == [0, 0]
    assert token_labels(torch.tensor([4, 7]), [torch.tensor([1])]).tolist() == [1, 1]


def test_token_labels_count_positions_like_the_reference_or_distinct_ids():
    false = torch.tensor([5, 5, 5, 7, 8])
    trues = [torch.tensor([5, 1]), torch.tensor([7, 8])]
    # positions in common: 3 (the repeated 5) vs 2 -> the first true answer
    assert token_labels(false, trues).tolist() == [0, 0, 0, 1, 1]
    assert token_labels(false, trues, "positions").tolist() == [0, 0, 0, 1, 1]
    # distinct ids in common: 1 vs 2 -> the second true answer
    assert token_labels(false, trues, "ids").tolist() == [1, 1, 1, 0, 0]
    with pytest.raises(DataError, match="match must be"):
        token_labels(false, trues, "tokens")


def test_label_match_config_reaches_the_fit():
    model, tok = tiny_model("llama")
    from tae_framework.plugins import default_registry

    t = synthetic_targets(model, default_registry().adapter_for(model))
    g = torch.Generator().manual_seed(0)
    seqs = []
    for group in range(6):
        seqs.append(TokenSequence(torch.tensor([5, 1]), 1, group))
        seqs.append(TokenSequence(torch.tensor([7, 8]), 1, group))
        feats = torch.randn(5, t.num_targets, t.unit_dim, generator=g)
        seqs.append(TokenSequence(torch.tensor([5, 5, 5, 7, 8]), 0, group, feats))
    inputs = EstimatorInputs(t, seqs)
    by_pos = TokenMisalignmentEstimator().fit(inputs)
    by_ids = TokenMisalignmentEstimator(label_match="ids").fit(inputs)
    # opposite labels on the same features: the probes point the other way
    assert bool(((by_pos.coef_ * by_ids.coef_).sum(-1) < 0).all())
    with pytest.raises(ConfigError, match="label_match"):
        TokenMisalignmentEstimator(label_match="tokens")


def test_estimator_refuses_unlabelable_or_single_class_data():
    model, tok = tiny_model("llama")
    from tae_framework.plugins import default_registry

    t = synthetic_targets(model, default_registry().adapter_for(model))
    f = torch.randn(3, t.num_targets, t.unit_dim)
    same = EstimatorInputs(t, [TokenSequence(torch.tensor([1, 2, 3]), 1, 0), TokenSequence(torch.tensor([1, 2, 3]), 0, 0, f)])
    with pytest.raises(DataError, match="no misaligned tokens"):
        TokenMisalignmentEstimator().fit(same)
    orphan = EstimatorInputs(t, [TokenSequence(torch.tensor([1, 2, 3]), 0, 7, f)])
    with pytest.warns(UserWarning, match="no aligned answer in their group"), pytest.raises(DataError, match="cannot fit"):
        TokenMisalignmentEstimator().fit(orphan)


def test_beta_out_of_range_is_rejected():
    with pytest.raises(ConfigError, match="beta"):
        AlignmentPipeline.from_preset("tae", intervener={"beta": -0.1})


def test_mai_without_estimator_needs_signals_switched_off(fitted):
    pipe, model, tok = fitted
    from tae_framework.interveners.adaptive import AdaptiveIntervener

    with pytest.raises(ConfigError, match="needs an estimator"):
        AdaptiveIntervener().fit(pipe.targets_, None)


# -- the slow reference -----------------------------------------------------------------------
def _sk_probe(w: torch.Tensor, b: float) -> LogisticRegression:
    clf = LogisticRegression()
    clf.classes_ = np.array([0, 1])
    clf.coef_ = w.double().numpy()[None]
    clf.intercept_ = np.array([b])
    return clf


def _slow_entropy(resid_row: np.ndarray, w_out: np.ndarray) -> float:
    logits = w_out @ resid_row
    z = (logits - logits.mean()) * DEFAULT_ENTROPY_GAIN
    z = z - z.max()
    p = np.exp(z) / np.exp(z).sum()
    ent = -(p * np.log(np.where(p > 0, p, 1.0))).sum()
    return float(ent / math.log(len(logits)))


class SlowMAI:
    """Per row, per head, per step: sklearn predict_proba and an explicit numpy logit lens."""

    def __init__(self, pipe, model, adapter):
        self.t = pipe.targets_
        self.est = pipe.estimator
        self.cfg = pipe.intervener.config
        self.model, self.adapter = model, adapter
        self.shape = adapter.shape(model)
        self.w_out = adapter.unembedding(model).weight.detach().double().numpy()
        self.resid: dict[int, torch.Tensor] = {}
        self.log: list[tuple[int, np.ndarray]] = []

    def __enter__(self):
        layers = self.adapter.layers(self.model)
        self.handles = []
        for layer in self.t.edited_layers():
            self.handles.append(layers[layer].register_forward_pre_hook(self._resid(layer), with_kwargs=True))
            self.handles.append(self.adapter.head_module(self.model, layer).register_forward_pre_hook(self._edit(layer)))
        return self

    def __exit__(self, *a):
        for h in self.handles:
            h.remove()

    def _resid(self, layer):
        def f(m, args, kwargs):
            self.resid[layer] = (args[0] if args else kwargs["hidden_states"]).detach().clone()
        return f

    def _edit(self, layer):
        def f(m, args):
            x = args[0].clone()
            d = self.shape.head_dim
            mult = np.zeros((x.shape[0], self.t.num_targets))
            for b in range(x.shape[0]):
                u = _slow_entropy(self.resid[layer][b, -1].double().numpy(), self.w_out)
                for k in range(self.t.num_targets):
                    if int(self.t.layers[k]) != layer:
                        continue
                    h = int(self.t.units[k])
                    feat = x[b, -1, h * d : (h + 1) * d].double().numpy()[None]
                    p = _sk_probe(self.est.coef_[k], float(self.est.intercept_[k])).predict_proba(feat)[0, 1]
                    m_bk = 1 + self.cfg.beta * p + (1 - self.cfg.beta) * u
                    mult[b, k] = m_bk
                    coef = self.cfg.alpha * float(self.t.sigmas[k]) * m_bk
                    x[b, -1, h * d : (h + 1) * d] += coef * self.t.directions[k].to(x.dtype)
            self.log.append((layer, mult))
            return (x,)
        return f


def test_mai_strength_per_token_matches_the_slow_reference_in_batched_generation(fitted):
    pipe, model, tok = fitted
    adapter = pipe._adapter(model)
    prompts = ["Q: where is b? A:", "Q: where is zz? A: in", "Q: k? A:"]
    holder = {}

    def ours():
        holder["s"] = pipe.apply(model, "last", record=True)
        return holder["s"]

    fast = greedy_generate(model, tok, prompts, max_new_tokens=6, batch_size=3, edit=ours)
    slow_ref = SlowMAI(pipe, model, adapter)
    slow = greedy_generate(model, tok, prompts, max_new_tokens=6, batch_size=3, edit=lambda: slow_ref)
    assert fast == slow
    trace = holder["s"].trace
    assert len(trace) == len(slow_ref.log) > 0
    by_layer = pipe.targets_.by_layer()
    for (layer_a, coef), (layer_b, mult) in zip(trace, slow_ref.log):
        assert layer_a == layer_b
        expected = torch.from_numpy(mult[:, by_layer[layer_a].numpy()]).float()
        torch.testing.assert_close(coef[:, -1].float(), expected, atol=2e-5, rtol=1e-5)
    # the edits really vary per token: strengths are not constant
    allv = torch.cat([c.reshape(-1) for _, c in trace])
    assert float(allv.max() - allv.min()) > 1e-3


def test_zero_alpha_leaves_generation_unchanged(fitted):
    pipe, model, tok = fitted
    zero = AlignmentPipeline.from_preset("tae", prober={"top_k": 4}, intervener={"alpha": 0.0}).fit(model, tok, records())
    prompts = ["Q: where is b? A:", "Q: where is q? A:"]
    assert zero.generate(model, tok, prompts, max_new_tokens=8) == zero.generate(model, tok, prompts, max_new_tokens=8, edit=False)
    assert pipe.generate(model, tok, prompts, max_new_tokens=8) != zero.generate(model, tok, prompts, max_new_tokens=8)


def test_shared_lens_needs_one_residual_stream_per_step(fitted):
    pipe, model, tok = fitted
    shared = AlignmentPipeline.from_preset("tae-shared-lens", **OVR).fit(model, tok, records())
    torch.testing.assert_close(shared.targets_.directions, pipe.targets_.directions)
    runtime_exact = pipe.estimator.bind(model, pipe._adapter(model), pipe.targets_)
    runtime_shared = shared.estimator.bind(model, shared._adapter(model), shared.targets_)
    assert len(runtime_shared.residual_layers) == 1 <= len(runtime_exact.residual_layers)


@pytest.mark.parametrize("flags", [{"use_p": False}, {"use_u": False}, {"use_base": False}])
def test_ablation_switches_change_the_multiplier(fitted, flags):
    pipe, model, tok = fitted
    ids = tok(["Q: where is c? A: in 2 town ."], return_tensors="pt")
    ablated = AlignmentPipeline.from_preset("tae", prober={"top_k": 4}, intervener={"alpha": 6.0, **flags}).fit(model, tok, records())
    with torch.no_grad():
        with pipe.apply(model, "all", record=True) as s_full:
            model(**ids)
        with ablated.apply(model, "all", record=True) as s_abl:
            model(**ids)
    # compare the first edited layer: later layers see inputs that earlier edits changed
    full, abl = s_full.trace[0][1].reshape(-1), s_abl.trace[0][1].reshape(-1)
    if flags.get("use_base") is False:
        torch.testing.assert_close(abl + 1, full)
    else:
        assert bool((abl <= full + 1e-6).all()) and not torch.allclose(abl, full)


def test_span_scope_runs_the_lens_only_at_edited_positions(fitted):
    pipe, model, tok = fitted
    adapter = pipe._adapter(model)
    runtime = pipe.estimator.bind(model, adapter, pipe.targets_)
    resid = torch.randn(2, 7, adapter.shape(model).hidden_size)
    mask = torch.zeros(2, 7, dtype=torch.bool)
    mask[0, 4:6] = True
    mask[1, 2] = True
    full = runtime.uncertainty(resid)
    calls = []
    head = runtime._lens  # the projection the lens uses (the output layer, or its half-precision copy)
    runtime._lens = lambda h: (calls.append(h.shape[0]), head(h))[1]
    part = runtime.uncertainty(resid, ForwardContext(span_positions=mask.nonzero(as_tuple=True)))
    assert calls == [3], "the lens must see only the 3 edited positions"
    torch.testing.assert_close(part[mask], full[mask])
    assert bool((part[~mask] == 0).all())

    prompts, comps = ["Q: where is b? A:", "Q: where is k? A:"], [" in 1 town .", " at 4 sea ."]
    scores = pipe.score(model, tok, prompts, comps)
    from tae_framework.editing import EditSession

    original = EditSession.set_span

    def full_lens_span(self, m):  # same edit, but forget the positions: the lens runs everywhere
        original(self, m)
        self.context.set_span_positions(None)

    EditSession.set_span = full_lens_span
    try:
        reference = pipe.score(model, tok, prompts, comps)
    finally:
        EditSession.set_span = original
    torch.testing.assert_close(scores, reference)
